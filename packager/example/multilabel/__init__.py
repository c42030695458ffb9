"""The multi-label example (issue 30; docs/example-multilabel.md).

A narrow ResNet-18 (width 16) for 1x64x64 chest X-rays with three sigmoid outputs, trained on
PneumoniaMNIST: `pneumonia` is the dataset's real label, `bright` and `asymmetric` are SYNTHETIC
findings computed from the pixels (data.py says how), so the per-finding machinery can be checked
against labels that are exactly known. Nothing here is a clinical claim about the synthetic ones.

- data.py: the multi-label npz ((N, 3) or (N, 14) 0/1 labels) written from PneumoniaMNIST;
- train.py: `python -m packager.example.multilabel.train --out DIR [--epochs N] [--limit N]`,
  trains, chooses each finding's threshold on val, evaluates, exports ONNX ending in a Sigmoid,
  writes DIR/packager.toml; `trained_model` caches the result;
- project.py: the packager.toml template's preprocessing, the filled-in copy and its checks;
- densenet.py: the DenseNet-121-sized 14-output model (untrained) for timing at 224x224;
  benchmarks/multilabel_densenet.py writes it with its data and config and measures it.
"""
