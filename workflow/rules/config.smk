# The config: checked against the schema, then its runs expanded (`runs` and every sweep's grid, each merged over
# `defaults`) and each checked as a run. Every mistake is one line naming the entry, the run, the key and the value.
import copy
import itertools
import re

from snakemake.common.configfile import load_configfile
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}
BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def expectation(error):
    """What a jsonschema error says the value should have been."""
    kind, value = error.validator, error.validator_value
    if kind == "type":
        return f"expected {' or '.join(TYPE_NAMES.get(t, t) for t in ([value] if isinstance(value, str) else value))}"
    if kind == "enum":
        return "expected one of " + ", ".join(map(str, value))
    if kind == "const":
        return f"expected {value!r}"
    if kind in BOUNDS:
        return f"expected {BOUNDS[kind]} {value}"
    if kind == "pattern":
        return f"expected to match {value}"
    if kind in ("oneOf", "anyOf"):
        return "expected " + " or ".join(dict.fromkeys(expectation(e).removeprefix("expected ") for e in error.context))
    return error.message


def schema_problem(failure):
    """One line for a failed ``validate``: the innermost jsonschema error behind Snakemake's WorkflowError."""
    error = failure.__context__
    if not hasattr(error, "absolute_path"):
        return str(failure).strip().splitlines()[-1]
    while error.context:  # oneOf/anyOf: follow the branch that got deepest into the value, if one did
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) == len(error.absolute_path):
            break
        error = deepest
    path = ".".join(map(str, error.absolute_path))
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {}))) or "none"
        keys = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = f"{path}." if path else ""
        return "; ".join(f"{prefix}{key}: unknown key; allowed: {allowed}" for key in keys)
    if error.validator == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        return f"{path or 'config'}: missing key(s) {', '.join(missing)}"
    value = repr(error.instance)
    return f"{path} = {value if len(value) <= 80 else value[:77] + '...'}: {expectation(error)}"


try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as failure:
    raise SystemExit(f"config: {schema_problem(failure)}") from None


def deep_merge(base, override):
    """``base`` with ``override`` merged in key by key (nested dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def set_dotted(tree, dotted, value, sweep):
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise SystemExit(f"config sweeps.{sweep}: grid key {dotted}: {key} is a value in the run, not a section")
    tree[last] = value


def get_dotted(tree, dotted, sweep):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            raise SystemExit(f"config sweeps.{sweep}: the name template names {{{dotted}}}, which the run does not set")
        tree = tree[key]
    return tree


def null_problems(config):
    """``runs.NAME: null`` drops a run that a config file defines: a null naming none is a mistake (a typo)."""
    defined = set()
    for path in workflow.configfiles:
        defined.update(name for name, body in (load_configfile(path).get("runs") or {}).items() if body is not None)
    return [
        f"config runs.{name}: null drops nothing, no config file defines run {name!r}; "
        f"defined: {', '.join(sorted(defined)) or 'none'}"
        for name, body in (config.get("runs") or {}).items()
        if body is None and name not in defined
    ]


def expand_runs(config):
    """Every run of the config: ``runs`` plus the grid of every sweep, each merged over ``defaults`` and checked
    against the run schema. Stops with one line per mistake, naming the config entry and the run."""
    runs, origins = {}, {}

    def add(name, override, origin):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
            raise SystemExit(f"config {origin}: run name {name!r} must start with a letter and hold only letters, "
                             "digits, '_', '.' and '-'")  # fmt: skip
        if name in runs:
            raise SystemExit(f"config {origin}: run name {name!r} is defined twice")
        runs[name], origins[name] = deep_merge(config["defaults"], override), origin

    for name, override in (config.get("runs") or {}).items():
        if override is not None:  # null drops a run inherited from the default config
            add(name, override, f"runs.{name}")
    for sweep, body in (config.get("sweeps") or {}).items():
        if body is None:
            continue
        keys = list(body["grid"])
        template = body.get("name") or "_".join([sweep, *(f"{k.split('.')[-1]}{{{k}}}" for k in keys)])
        for values in itertools.product(*body["grid"].values()):
            override = copy.deepcopy(body.get("run") or {})
            for key, value in zip(keys, values):
                set_dotted(override, key, value, sweep)
            name = re.sub(r"\{([^}]+)\}", lambda m: str(get_dotted(override, m.group(1), sweep)), template)
            add(name, override, f"sweeps.{sweep}")
    problems = null_problems(config)
    if not runs:
        problems.append("config: no runs (every entry of `runs` is null and there are no sweeps)")
    for name, spec in runs.items():
        if "arch" not in spec.get("backbone", {}):
            problems.append(f"config {origins[name]}: run {name!r} has no backbone.arch (set it there or in defaults)")
            continue
        try:
            validate(spec, schema="../schemas/run.schema.yaml", set_default=False)
        except WorkflowError as failure:
            problems.append(f"config {origins[name]}: run {name!r}: {schema_problem(failure)}")
    if problems:
        raise SystemExit("\n".join(dict.fromkeys(problems)))
    for name, spec in runs.items():
        spec["train"]["epochs"] = config["epochs"]
        runs[name] = {"name": name, **spec}
    return runs


RUNS = expand_runs(config)
# null drops a probe or the far-domain evaluation that an earlier config file defines
config["features"]["probes"] = {k: v for k, v in config["features"]["probes"].items() if v is not None}
if not config["features"]["probes"]:
    raise SystemExit("config: no probes (every entry of features.probes is null)")
for name, probe in config["features"]["probes"].items():
    if probe["kind"] == "classes" and probe.get("images", probe["n_support"] + 1) <= probe["n_support"]:
        raise SystemExit(
            f"config features.probes.{name}: images = {probe['images']} but n_support = {probe['n_support']}: "
            "a class probe needs images beyond its support images (images > n_support)"
        )
if config["evaluate"].get("far", "") is None:
    del config["evaluate"]["far"]
EPOCHS = list(range(0, config["epochs"] + 1))  # epoch 0 is the untrained network
if config["features"]["epochs"] == "all":
    FEATURE_EPOCHS = EPOCHS
else:
    FEATURE_EPOCHS = sorted(config["features"]["epochs"])
    if max(FEATURE_EPOCHS) > config["epochs"]:
        raise SystemExit(
            f"config: features.epochs asks for epoch {max(FEATURE_EPOCHS)} but epochs is {config['epochs']}"
        )


wildcard_constraints:
    run="|".join(re.escape(r) for r in RUNS),
