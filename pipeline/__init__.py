"""The cifar10 library: no command line, no DVC, nothing happens on import. Its parts, top down
(pyproject.toml's import-linter contract keeps imports going down):

- a run: `training` (a training run in phases: set up, resume, epochs, outcome), `evaluation`
  (a model file scored on the test split), `predict` (users' images);
- the loop and inference: `train_loop` (an epoch of steps), `step` (one step, its learning rate,
  weight average, CUDA graph), `optimizer` (SGD, Adam, Muon: `muon`), `inference` (logits, TTA),
  `augmentation` (the epoch's batches, augmented on the device);
- the machine: `device` (device, precision, seeding, data on the device), `compile_cache`
  (torch.compile and Inductor's cache), `hardware` (CPU classes and what measured fastest on
  each), `convolution` (matrix-product convolutions for small maps), `cores` (threads shared by
  trainings), `gpu_lease` (a GPU per training), `distributed` (DistributedDataParallel);
- the model: `architectures`, `model`, `weights` (the model file), `model_card` (what it says);
- state and data: `checkpoint`, `checkpoint_folder`, `download`, `data` (the archive, the
  prepared splits), `params` (params.yaml), `metrics`, `plots`, `files` (atomic writes), `lock`,
  `progress`, `source` (the code a stage runs), `errors`.
"""
