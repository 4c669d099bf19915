# Tables over all runs, figures, and the headline numbers and curves that `dvc metrics` and `dvc plots` show.


rule aggregate:
    input:
        train_logs=run_files("results/{run}/train_log.csv"),
        fewshot=run_files("results/{run}/fewshot_accuracy.csv"),
        nc=[path for run in RUNS for path in epoch_files("nc", FEATURE_EPOCHS, run)],
    output:
        train_log=table("train_log"),
        fewshot_accuracy=table("fewshot_accuracy"),
        nc_metrics=table("nc_metrics"),
        runs=table("runs"),
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    conda:
        ENV
    params:
        specs=json.dumps(list(RUNS.values()), sort_keys=True),
        code=code("aggregate", "runs-table"),
    shell:
        "(python -m metacollapse aggregate --kind train_log --out {output.train_log:q} {input.train_logs:q}"
        " && python -m metacollapse aggregate --kind fewshot --out {output.fewshot_accuracy:q} {input.fewshot:q}"
        " && python -m metacollapse aggregate --kind nc --out {output.nc_metrics:q} {input.nc:q}"
        " && python -m metacollapse runs-table --specs {params.specs:q} --out {output.runs:q}) > {log:q} 2>&1"


rule figures:
    input:
        nc=rules.aggregate.output.nc_metrics,
        train_log=rules.aggregate.output.train_log,
        fewshot=rules.aggregate.output.fewshot_accuracy,
        runs=rules.aggregate.output.runs,
    output:
        png=[
            report(
                f"results/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="Figures",
                labels=figure_labels(name),
            )
            for name in FIGURES
        ],
        pdf=[f"results/figures/{name}.pdf" for name in FIGURES],
    log:
        "logs/figures.log",
    benchmark:
        "benchmarks/figures.tsv"
    conda:
        ENV
    params:
        code=code("figures"),
    shell:
        "exec python -m metacollapse figures --nc {input.nc:q} --train-log {input.train_log:q} --fewshot {input.fewshot:q}"
        " --runs {input.runs:q} --out-dir results/figures > {log:q} 2>&1"


rule dvc_metrics:
    input:
        train_log=rules.aggregate.output.train_log,
        fewshot=rules.aggregate.output.fewshot_accuracy,
    output:
        metrics=directory("reports/metrics"),
        plots=directory("reports/plots"),
    log:
        "logs/dvc_metrics.log",
    benchmark:
        "benchmarks/dvc_metrics.tsv"
    conda:
        ENV
    params:
        code=code("dvc-metrics"),
    shell:
        "exec python -m metacollapse dvc-metrics --train-log {input.train_log:q} --fewshot {input.fewshot:q}"
        " --metrics {output.metrics:q} --plots-dir {output.plots:q} > {log:q} 2>&1"
