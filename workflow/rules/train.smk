# Training and few-shot evaluation: one job per run. The processed splits are inputs whose data version is a
# parameter (common.smk), and the device settings enter as the runtime they resolve to (start.smk): what reruns a
# run is what can change its numbers.


rule train:
    input:
        lambda wc: processed_inputs(train_splits(wc)),
    output:
        checkpoints=epoch_files("checkpoints", EPOCHS),
        log="results/{run}/train_log.csv",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    priority: run_priority
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
    params:
        spec=spec_json,
        data=lambda wc: data_versions(train_splits(wc)),
        runtime=lambda wc: runtime(wc.run, "train"),
        flags=lambda wc: runtime_flags(runtime(wc.run, "train")),
        code=code("train"),
    shell:
        # Resume state lives in results/{wildcards.run}/train_state/, which is not a declared output, so
        # Snakemake does not delete it when it reruns a killed job (see metacollapse.training).
        "exec python -m metacollapse train --spec {params.spec:q} --data-dir data/processed --out-dir results/{wildcards.run}"
        " {params.flags} --code-version {params.code} --threads {threads} > {log:q} 2>&1"


rule evaluate:
    input:
        checkpoint=epoch_files("checkpoints", EPOCHS[-1:]),
        splits=processed_inputs(EVALUATE_SPLITS),
    output:
        "results/{run}/fewshot_accuracy.csv",
    log:
        "logs/evaluate/{run}.log",
    benchmark:
        "benchmarks/evaluate/{run}.tsv"
    priority: run_priority
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
    params:
        spec=spec_json,
        evaluate=json.dumps(config["evaluate"], sort_keys=True),
        data=data_versions(EVALUATE_SPLITS),
        runtime=lambda wc: runtime(wc.run, "evaluate"),
        flags=lambda wc: runtime_flags(runtime(wc.run, "evaluate")),
        code=code("evaluate"),
    shell:
        "exec python -m metacollapse evaluate --spec {params.spec:q} --checkpoint {input.checkpoint:q}"
        " --params {params.evaluate:q} --data-dir data/processed --out {output:q}"
        " {params.flags} --threads {threads} > {log:q} 2>&1"
