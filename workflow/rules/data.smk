# Data: fetch and verify the raw files, then render the splits to uint8 arrays. Each prepare rule also writes a
# manifest (size, mtime, sha256 of what it wrote; start.smk has damaged files made again) and the data version
# (common.smk). Fashion-MNIST is fetched only when a config uses its splits.


rule download:
    output:
        raw_files("omniglot"),
    log:
        "logs/download.log",
    benchmark:
        "benchmarks/download.tsv"
    conda:
        ENV
    shell:
        "exec python -m metacollapse download --out-dir data/raw > {log:q} 2>&1"


rule prepare:
    input:
        zips=raw_files("omniglot"),
        splits=[f"{SPLIT_LISTS}/{split}.txt" for split in SPLITS],
        sums=f"{SPLIT_LISTS}/SHA256SUMS",
    output:
        arrays=[processed(split) for split in SPLITS],
        classes=expand("data/processed/{split}_classes.txt", split=SPLITS),
        manifest=manifest("omniglot"),
        version=version_file("omniglot"),
    log:
        "logs/prepare.log",
    benchmark:
        "benchmarks/prepare.tsv"
    conda:
        ENV
    params:
        splits=SPLITS,
        version=data_version("omniglot"),
        code=code("prepare"),
    run:
        shell(
            "exec python -m metacollapse prepare --raw-dir data/raw --splits-dir {SPLIT_LISTS}"
            " --out-dir data/processed --splits {params.splits} > {log:q} 2>&1"
        )
        write_manifest([*output.arrays, *output.classes], output.manifest)
        write_text(output.version, f"{params.version}\n")


rule download_fashion:
    output:
        raw_files("fashion"),
    log:
        "logs/download_fashion.log",
    benchmark:
        "benchmarks/download_fashion.tsv"
    conda:
        ENV
    shell:
        "exec python -m metacollapse download --dataset fashion --out-dir data/raw/fashion > {log:q} 2>&1"


rule prepare_fashion:
    input:
        raw_files("fashion"),
    output:
        arrays=[processed(split) for split in DATASETS["fashion"]["splits"]],
        classes=[f"data/processed/{split}_classes.txt" for split in DATASETS["fashion"]["splits"]],
        manifest=manifest("fashion"),
        version=version_file("fashion"),
    log:
        "logs/prepare_fashion.log",
    benchmark:
        "benchmarks/prepare_fashion.tsv"
    conda:
        ENV
    params:
        version=data_version("fashion"),
        code=code("prepare-fashion"),
    run:
        shell(
            "exec python -m metacollapse prepare-fashion --raw-dir data/raw/fashion --out-dir data/processed > {log:q} 2>&1"
        )
        write_manifest([*output.arrays, *output.classes], output.manifest)
        write_text(output.version, f"{params.version}\n")
