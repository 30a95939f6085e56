"""The cifar10 library: params, data, model, engine and metrics. No CLI, no DVC, no side effects on import."""
