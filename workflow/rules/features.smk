# Feature dumps on fixed probe sets and their neural-collapse tables: one job per run, looping over the epochs.


rule probes:
    input:
        [processed(split) for split in probe_splits()],
    output:
        "results/probes.npz",
    log:
        "logs/probes.log",
    conda:
        ENV
    params:
        spec=json.dumps({"seed": config["features"]["seed"], "probes": config["features"]["probes"]}, sort_keys=True),
        code=code("probes"),
    shell:
        "exec python -m metacollapse make-probes --params {params.spec:q} --data-dir data/processed --out {output:q}"
        " > {log:q} 2>&1"


rule features:
    input:
        checkpoints=epoch_files("checkpoints", "pt", FEATURE_EPOCHS),
        probes="results/probes.npz",
        splits=[processed(split) for split in probe_splits()],
    output:
        epoch_files("features", "npz", FEATURE_EPOCHS),
    log:
        "logs/features/{run}.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
    params:
        spec=spec_json,
        flags=compute_flags(),
        code=code("features"),
    shell:
        "exec python -m metacollapse features --spec {params.spec:q} --checkpoints {input.checkpoints:q} --out {output:q}"
        " --probes {input.probes:q} --data-dir data/processed {params.flags} --threads {threads} > {log:q} 2>&1"


rule nc:
    input:
        epoch_files("features", "npz", FEATURE_EPOCHS),
    output:
        epoch_files("nc", "csv", FEATURE_EPOCHS),
    log:
        "logs/nc/{run}.log",
    conda:
        ENV
    params:
        code=code("nc"),
    shell:
        "exec python -m metacollapse nc --features {input:q} --out {output:q} > {log:q} 2>&1"
