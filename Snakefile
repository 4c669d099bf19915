# metacollapse: neural collapse in Prototypical Networks on Omniglot (Medepalli & Doraiswamy, arXiv 2310.00451).
#   snakemake --cores all                                  # paper protocol (config/config.yaml)
#   snakemake --cores all --configfile config/quick.yaml   # CPU preset, minutes
# Stages live in workflow/rules/*.smk; every rule calls the `metacollapse` CLI.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/dvc.smk"


rule all:
    default_target: True
    input:
        all_targets(),
        rules.dvc_summary.output,
