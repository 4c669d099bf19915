"""The layout of a feature dump (``results/{run}/features/epoch_NNN.npz``, docs/CONTRACTS.md): written by
:mod:`metacollapse.features`, read by :mod:`metacollapse.nc_table`."""

#: Values of the dump's ``role`` array.
SUPPORT, QUERY = 0, 1
#: The layer of ``features`` (the final embedding); the dump's extra layers are ``features@<name>``.
EMBEDDING = "embedding"
#: Keys a feature dump must hold (docs/CONTRACTS.md).
REQUIRED_DUMP_KEYS: tuple[str, ...] = (
    "features",
    "labels",
    "probe",
    "probe_names",
    "probe_kinds",
    "probe_bn_modes",
    "probe_splits",
    "episode",
    "role",
    "epoch",
    "meta",
)
#: Optional keys of a feature dump: the learner's own linear classifier (all four or none).
CLASSIFIER_KEYS: tuple[str, ...] = ("classifier_weight", "classifier_bias", "classifier_classes", "classifier_split")
