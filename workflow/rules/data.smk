# Data: fetch and verify the Omniglot zips, then render the Vinyals splits to uint8 arrays.


rule download:
    output:
        expand("data/raw/{zip}", zip=RAW_ZIPS),
    log:
        "logs/download.log",
    conda:
        ENV
    shell:
        "exec python -m metacollapse download --out-dir data/raw > {log:q} 2>&1"


rule prepare:
    input:
        zips=expand("data/raw/{zip}", zip=RAW_ZIPS),
        splits=expand("data/splits/vinyals/{split}.txt", split=SPLITS),
        sums="data/splits/vinyals/SHA256SUMS",
    output:
        arrays=expand("data/processed/{split}.npy", split=SPLITS),
        classes=expand("data/processed/{split}_classes.txt", split=SPLITS),
    log:
        "logs/prepare.log",
    conda:
        ENV
    params:
        splits=SPLITS,
        code=code("prepare"),
    shell:
        "exec python -m metacollapse prepare --raw-dir data/raw --splits-dir data/splits/vinyals --out-dir data/processed"
        " --splits {params.splits} > {log:q} 2>&1"
