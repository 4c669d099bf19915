# Figures (PNG for the report, PDF for papers) from the NC table, the training logs and the few-shot accuracy.


rule figures:
    input:
        nc="results/nc_metrics.csv",
        logs=[f"results/{b}/train_log.csv" for b in BACKBONES],
        fewshot=[f"results/{b}/fewshot_accuracy.csv" for b in BACKBONES],
    output:
        png=[
            report(f"results/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in FIGURES
        ],
        pdf=[f"results/figures/{name}.pdf" for name in FIGURES],
    conda:
        CONDA_ENV
    log:
        "logs/figures.log",
    shell:
        "metacollapse figures --nc {input.nc:q} --train-logs {input.logs:q} --fewshot {input.fewshot:q}"
        " --out-dir results/figures > {log:q} 2>&1"
