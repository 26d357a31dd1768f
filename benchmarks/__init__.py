"""cnnfast's benchmarks: speed and memory of cnnfast against eager torch and torch.compile,
side by side in one run. `python -m benchmarks --help` says how to run them.

    harness.py             the one harness: device, timing, memory, metadata
    cases_alexnet.py       AlexNet's LRN, max-pool and ReLU-LRN-max-pool at AlexNet's shapes
    cases_bn_relu_conv.py  BatchNorm -> ReLU -> Conv2d at DenseNet-121's and ResNet-50's shapes
    cases_densenet.py      DenseNet training steps: plain, torch.checkpoint and cnnfast's
    cases_models.py        training steps of AlexNet, ResNet-50 and DPN-92
    densenet_memory.py     DenseNet memory against depth (python -m benchmarks.densenet_memory)
    targets.py             the project's speed and memory targets, judged from the measured rows
    report.py              the table, the JSON, the markdown and the chart
    merge.py               one results file from several partial runs (python -m benchmarks.merge)
"""
