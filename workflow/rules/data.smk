# Data stage: fetch and verify the Omniglot zips, then render the Vinyals splits to uint8 arrays.


rule download:
    # The mirror is a param (Snakemake's lint wants every shell value declared), so pointing an existing
    # workspace at another mirror re-runs download and what follows; `--touch` marks it all current instead.
    output:
        expand("data/raw/{zip}", zip=RAW_ZIPS),
    params:
        mirror=config["omniglot_mirror"],
    conda:
        CONDA_ENV
    log:
        "logs/download.log",
    shell:
        "metacollapse download --out-dir data/raw --mirror {params.mirror:q} > {log:q} 2>&1"


rule prepare:
    input:
        zips=expand("data/raw/{zip}", zip=RAW_ZIPS),
        splits=expand("data/splits/vinyals/{split}.txt", split=SPLITS),
        sums="data/splits/vinyals/SHA256SUMS",
    output:
        arrays=expand("data/processed/{split}.npy", split=SPLITS),
        classes=expand("data/processed/{split}_classes.txt", split=SPLITS),
    params:
        splits=SPLITS,
    conda:
        CONDA_ENV
    log:
        "logs/prepare.log",
    shell:
        "metacollapse prepare --raw-dir data/raw --splits-dir data/splits/vinyals --out-dir data/processed"
        " --splits {params.splits} > {log:q} 2>&1"
