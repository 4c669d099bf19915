# Training and few-shot evaluation, one job per backbone.


rule train:
    input:
        train=processed(config["train"]["split"]),
        val=processed(config["val"]["split"]),
    output:
        checkpoints=[f"results/{{backbone}}/checkpoints/epoch_{e:03d}.pt" for e in EPOCHS],
        log="results/{backbone}/train_log.csv",
    params:
        spec=train_params,
        flags=compute_flags(),
    threads: 4
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "logs/train/{backbone}.log",
    shell:
        # Resume state lives in results/{wildcards.backbone}/train_state/, which is not a declared output, so
        # Snakemake does not delete it when it reruns a killed job (see metacollapse.training).
        "metacollapse train --backbone {wildcards.backbone} --params {params.spec:q}"
        " --data-dir data/processed --out-dir results/{wildcards.backbone}"
        " {params.flags} --threads {threads} > {log:q} 2>&1"


rule evaluate:
    input:
        checkpoint=lambda wc: checkpoint(wc.backbone, EPOCHS[-1]),
        split=processed(config["evaluate"]["split"]),
    output:
        "results/{backbone}/fewshot_accuracy.csv",
    params:
        spec=json.dumps(config["evaluate"], sort_keys=True),
        flags=compute_flags(),
    threads: 4
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "logs/evaluate/{backbone}.log",
    shell:
        "metacollapse evaluate --backbone {wildcards.backbone} --checkpoint {input.checkpoint:q}"
        " --params {params.spec:q} --data-dir data/processed --out {output:q}"
        " {params.flags} --threads {threads} > {log:q} 2>&1"
