# metacollapse: neural collapse in few-shot learners on Omniglot (after Medepalli & Doraiswamy, arXiv 2310.00451).
#   snakemake --cores all                                  # paper protocol (config/config.yaml)
#   snakemake --cores all --configfile config/quick.yaml   # every stage in minutes on a CPU
# Stages live in workflow/rules/*.smk; every rule calls the `metacollapse` command line.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/summary.smk"


localrules:
    all,
    download,
    probes,
    aggregate,
    figures,
    dvc_metrics,


onstart:
    # On a CPU, say how long the runs still to train would take (measured now) and name the CPU presets.
    os.environ.update({"METACOLLAPSE_PLAN": cpu_plan()})
    shell("python -m metacollapse estimate || true")


rule all:
    default_target: True
    input:
        rules.figures.output,
        rules.dvc_metrics.output,
        run_files("results/{run}/fewshot_accuracy.csv"),
        # Named so that a deleted feature dump or NC table is remade even though the tables built from it exist
        # (Snakemake does not remake missing intermediate files on its own).
        [
            f"results/{run}/{kind}/epoch_{e:03d}.{ext}"
            for run in RUNS
            for e in FEATURE_EPOCHS
            for kind, ext in (("features", "npz"), ("nc", "csv"))
        ],
