# DVC support (docs/dvc.md): the metrics/plots summary that `dvc metrics` and `dvc plots` read (`rule all` asks
# for rules.dvc_summary.output), and target-only rules that let a DVC stage ask for "every NC table of one
# backbone" without knowing the epochs.


rule dvc_summary:
    input:
        nc="results/nc_metrics.csv",
        logs=[f"results/{b}/train_log.csv" for b in BACKBONES],
        fewshot=[f"results/{b}/fewshot_accuracy.csv" for b in BACKBONES],
    output:
        metrics="results/metrics.json",
        plots=[f"results/plots/nc_{b}.csv" for b in BACKBONES],
    conda:
        CONDA_ENV
    log:
        "logs/dvc_summary.log",
    shell:
        "metacollapse dvc-summary --nc {input.nc:q} --train-logs {input.logs:q} --fewshot {input.fewshot:q}"
        " --metrics {output.metrics:q} --plots-dir results/plots > {log:q} 2>&1"


# One per backbone: the DVC stage features-{backbone} runs `snakemake dvc_features_{backbone}`.
for _backbone in BACKBONES:

    rule:
        name:
            f"dvc_features_{_backbone}"
        input:
            [f"results/{_backbone}/nc/epoch_{e:03d}.csv" for e in FEATURE_EPOCHS],
