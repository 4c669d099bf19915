# metacollapse: neural collapse in few-shot learners on Omniglot (after Medepalli & Doraiswamy, arXiv 2310.00451).
#   snakemake --cores all                                  # paper protocol (config/config.yaml)
#   snakemake --cores all --configfile config/quick.yaml   # every stage in minutes on a CPU
# Stages live in workflow/rules/*.smk; every rule calls the `metacollapse` command line.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/config.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/start.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/summary.smk"


localrules:
    all,
    download,
    download_fashion,
    probes,
    aggregate,
    figures,
    dvc_metrics,


onstart:
    # Before a local run that trains: on a CPU, how long that training would take here (bounded in time).
    estimate_training_time()


rule all:
    default_target: True
    input:
        rules.figures.output,
        rules.dvc_metrics.output,
        run_files("results/{run}/fewshot_accuracy.csv"),
        # Named so that a deleted checkpoint, feature dump or NC table is remade even though what was built from
        # it exists (Snakemake does not remake missing intermediate files on its own), and the manifests so that
        # damaged processed data is remade (start.smk).
        [
            path
            for run in RUNS
            for kind, epochs in (("checkpoints", EPOCHS), ("features", FEATURE_EPOCHS), ("nc", FEATURE_EPOCHS))
            for path in epoch_files(kind, epochs, run)
        ],
        [manifest(dataset) for dataset in USED_DATASETS],
        repair,
