# Per-epoch feature dumps on fixed probe sets, and their neural-collapse metrics.


rule probes:
    input:
        [processed(split) for split in probe_splits()],
    output:
        "results/probes.npz",
    params:
        spec=json.dumps(
            {"seed": config["features"]["seed"], "probes": config["features"]["probes"]}, sort_keys=True
        ),
    conda:
        CONDA_ENV
    log:
        "logs/probes.log",
    shell:
        "metacollapse make-probes --params {params.spec:q} --data-dir data/processed --out {output:q}"
        " > {log:q} 2>&1"


rule dump_features:
    input:
        checkpoint="results/{backbone}/checkpoints/epoch_{epoch}.pt",
        probes="results/probes.npz",
        splits=[processed(split) for split in probe_splits()],
    output:
        "results/{backbone}/features/epoch_{epoch}.npz",
    params:
        bn_mode=config["features"]["bn_mode"],
        flags=compute_flags(),
    threads: 2
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "logs/dump_features/{backbone}/epoch_{epoch}.log",
    shell:
        "metacollapse dump-features --backbone {wildcards.backbone} --checkpoint {input.checkpoint:q}"
        " --probes {input.probes:q} --data-dir data/processed --out {output:q} --bn-mode {params.bn_mode}"
        " {params.flags} --threads {threads} > {log:q} 2>&1"


rule nc_metrics:
    input:
        "results/{backbone}/features/epoch_{epoch}.npz",
    output:
        "results/{backbone}/nc/epoch_{epoch}.csv",
    conda:
        CONDA_ENV
    log:
        "logs/nc_metrics/{backbone}/epoch_{epoch}.log",
    shell:
        "metacollapse nc --features {input:q} --out {output:q} > {log:q} 2>&1"


rule aggregate_nc:
    input:
        [f"results/{b}/nc/epoch_{e:03d}.csv" for b in BACKBONES for e in FEATURE_EPOCHS],
    output:
        "results/nc_metrics.csv",
    conda:
        CONDA_ENV
    log:
        "logs/aggregate_nc.log",
    shell:
        "metacollapse aggregate-nc --out {output:q} {input:q} > {log:q} 2>&1"
