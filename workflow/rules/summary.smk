# Tables over all runs, figures, and the headline numbers and curves that `dvc metrics` and `dvc plots` show.


rule aggregate:
    input:
        train_logs=run_files("results/{run}/train_log.csv"),
        fewshot=run_files("results/{run}/fewshot_accuracy.csv"),
        nc=[f"results/{run}/nc/epoch_{e:03d}.csv" for run in RUNS for e in FEATURE_EPOCHS],
    output:
        train_log="results/train_log.csv",
        fewshot="results/fewshot_accuracy.csv",
        nc="results/nc_metrics.csv",
    log:
        "logs/aggregate.log",
    conda:
        ENV
    params:
        code=code("aggregate"),
    shell:
        "(python -m metacollapse aggregate --kind train_log --out {output.train_log:q} {input.train_logs:q}"
        " && python -m metacollapse aggregate --kind fewshot --out {output.fewshot:q} {input.fewshot:q}"
        " && python -m metacollapse aggregate --kind nc --out {output.nc:q} {input.nc:q}) > {log:q} 2>&1"


rule figures:
    input:
        nc="results/nc_metrics.csv",
        train_log="results/train_log.csv",
        fewshot="results/fewshot_accuracy.csv",
    output:
        png=[
            report(f"results/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in FIGURES
        ],
        pdf=[f"results/figures/{name}.pdf" for name in FIGURES],
    log:
        "logs/figures.log",
    conda:
        ENV
    params:
        code=code("figures"),
    shell:
        "exec python -m metacollapse figures --nc {input.nc:q} --train-log {input.train_log:q} --fewshot {input.fewshot:q}"
        " --out-dir results/figures > {log:q} 2>&1"


rule dvc_metrics:
    input:
        train_log="results/train_log.csv",
        fewshot="results/fewshot_accuracy.csv",
    output:
        metrics="reports/metrics.json",
        plots=directory("reports/plots"),
    log:
        "logs/dvc_metrics.log",
    conda:
        ENV
    params:
        code=code("aggregate"),
    shell:
        "exec python -m metacollapse dvc-metrics --train-log {input.train_log:q} --fewshot {input.fewshot:q}"
        " --metrics {output.metrics:q} --plots-dir {output.plots:q} > {log:q} 2>&1"
