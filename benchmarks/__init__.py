"""cnnfast's benchmarks: speed and memory of cnnfast against eager torch and torch.compile,
side by side in one run. `python -m benchmarks --help` says how to run them.

    harness.py        the one harness: device, timing, memory, metadata
    cases_alexnet.py  AlexNet's LRN, max-pool and ReLU-LRN-max-pool at AlexNet's shapes
    targets.py        the project's speed and memory targets, judged from the measured rows
    report.py         the table, the JSON, the markdown and the chart
"""
