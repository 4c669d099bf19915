# Training and few-shot evaluation: one job per run.


rule train:
    input:
        train=lambda wc: processed(RUNS[wc.run]["train"]["split"]),
        val=lambda wc: processed(RUNS[wc.run]["val"]["split"]),
    output:
        checkpoints=epoch_files("checkpoints", "pt", EPOCHS),
        log="results/{run}/train_log.csv",
    log:
        "logs/train/{run}.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
    params:
        spec=spec_json,
        flags=compute_flags(),
        deterministic="--deterministic" if config["deterministic"] else "",
        code=code("train"),
    shell:
        # Resume state lives in results/{wildcards.run}/train_state/, which is not a declared output, so
        # Snakemake does not delete it when it reruns a killed job (see metacollapse.training).
        "exec python -m metacollapse train --spec {params.spec:q} --data-dir data/processed --out-dir results/{wildcards.run}"
        " {params.flags} {params.deterministic} --threads {threads} > {log:q} 2>&1"


rule evaluate:
    input:
        checkpoint=f"results/{{run}}/checkpoints/epoch_{EPOCHS[-1]:03d}.pt",
        split=processed(config["evaluate"]["split"]),
    output:
        "results/{run}/fewshot_accuracy.csv",
    log:
        "logs/evaluate/{run}.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
    params:
        spec=spec_json,
        evaluate=json.dumps(config["evaluate"], sort_keys=True),
        flags=compute_flags(),
        code=code("evaluate"),
    shell:
        "exec python -m metacollapse evaluate --spec {params.spec:q} --checkpoint {input.checkpoint:q}"
        " --params {params.evaluate:q} --data-dir data/processed --out {output:q}"
        " {params.flags} --threads {threads} > {log:q} 2>&1"
