# Feature dumps on fixed probe sets and their neural-collapse tables: one job per run, looping over the epochs.


rule probes:
    input:
        processed_inputs(PROBE_SPLITS),
    output:
        "results/probes.npz",
    log:
        "logs/probes.log",
    benchmark:
        "benchmarks/probes.tsv"
    conda:
        ENV
    params:
        spec=json.dumps({"seed": config["features"]["seed"], "probes": config["features"]["probes"]}, sort_keys=True),
        data=data_versions(PROBE_SPLITS),
        code=code("make-probes"),
    shell:
        "exec python -m metacollapse make-probes --params {params.spec:q} --data-dir data/processed --out {output:q}"
        " > {log:q} 2>&1"


rule features:
    input:
        checkpoints=epoch_files("checkpoints", FEATURE_EPOCHS),
        probes="results/probes.npz",
        splits=processed_inputs(PROBE_SPLITS),
    output:
        epoch_files("features", FEATURE_EPOCHS),
    log:
        "logs/features/{run}.log",
    benchmark:
        "benchmarks/features/{run}.tsv"
    priority: run_priority
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
    params:
        spec=spec_json,
        layers=" ".join(FEATURE_LAYERS),
        feature_precision=config["features"]["precision"],
        data=data_versions(PROBE_SPLITS),
        runtime=lambda wc: runtime(wc.run, "features"),
        flags=lambda wc: runtime_flags(runtime(wc.run, "features")),
        code=code("features"),
    shell:
        "exec python -m metacollapse features --spec {params.spec:q} --checkpoints {input.checkpoints:q} --out {output:q}"
        " --probes {input.probes:q} --data-dir data/processed --layers {params.layers} --feature-precision"
        " {params.feature_precision} {params.flags} --threads {threads} > {log:q} 2>&1"


rule nc:
    input:
        epoch_files("features", FEATURE_EPOCHS),
    output:
        epoch_files("nc", FEATURE_EPOCHS),
    log:
        "logs/nc/{run}.log",
    benchmark:
        "benchmarks/nc/{run}.tsv"
    conda:
        ENV
    params:
        bootstrap=config["nc"]["bootstrap"],
        code=code("nc"),
    shell:
        "exec python -m metacollapse nc --features {input:q} --out {output:q} --bootstrap {params.bootstrap}"
        " > {log:q} 2>&1"
