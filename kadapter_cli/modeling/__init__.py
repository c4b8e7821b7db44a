"""The models: backbone loading, the knowledge adapter, fusion, heads, the K-Adapter model and the
models built on it (task model, adapter pretrainer, probe model), released-checkpoint import, the
tiny backbone."""
