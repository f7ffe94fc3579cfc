"""Speed peer: torchvision's ``ssd300_vgg16`` on the CPU, batch-1 eval or training steps (never a project dependency).

Run it from a throwaway venv (``pip install torch==2.14.1 torchvision==0.29.1 numpy``), in the same
session as ``tools/benchmark.py infer``, so that both numbers come from the same machine state:

    /tmp/torchvenv/bin/python tools/peers/torchvision_ssd.py --threads=2 [--channels_last]
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
        /tmp/torchvenv/bin/python tools/peers/torchvision_ssd.py --channels_last

Random weights (no download); the model's own transform (resize to 300, normalize) and
post-processing (score 0.01, top 400 per class, NMS 0.45, 200 detections) are included, as in ours.
``--train``: SGD steps (momentum 0.9, weight decay 5e-4) of the model's own loss (matching, 3:1 hard
negatives, smooth L1) on a batch of random 300 x 300 images with 1-5 random boxes each, the peer of
``tools/benchmark.py train`` on ``configs/ablations/table1_none_*.cfg`` (the same VGG16 SSD300 without BN;
ours has no L2Norm difference worth timing). The first 2 steps are not timed.
The last line is one JSON object.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torchvision


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--num_classes", type=int, default=21, help="with background; 21 = VOC, as our VOC configs")
    parser.add_argument("--train", action="store_true", help="time training steps instead of batch-1 inference")
    parser.add_argument("--batch", type=int, default=8, help="--train: images per step")
    args = parser.parse_args()
    if args.train:
        return train(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
                                                          num_classes=args.num_classes).eval()
    image = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (3, args.size, args.size)).astype(np.float32))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):
            model([image])
        seconds = []
        for _ in range(args.iterations):
            start = time.perf_counter()
            model([image])
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(json.dumps({"mode": "peer_infer", "model": "torchvision ssd300_vgg16", "num_classes": args.num_classes,
                      "threads": args.threads,
                      "channels_last": args.channels_last, "latency_ms": round(1e3 * median, 2),
                      "best_ms": round(1e3 * min(seconds), 2), "images_per_sec": round(1 / median, 2)}))


def train(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
                                                      num_classes=args.num_classes).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)

    def batch():
        images, targets = [], []
        for _ in range(args.batch):
            images.append(torch.from_numpy(rng.uniform(0, 1, (3, args.size, args.size)).astype(np.float32)))
            n = int(rng.integers(1, 6))
            xy = rng.uniform(0, args.size * 0.6, (n, 2))
            wh = rng.uniform(20, args.size * 0.4, (n, 2))
            targets.append({"boxes": torch.from_numpy(np.concatenate([xy, xy + wh], 1).astype(np.float32)),
                            "labels": torch.from_numpy(rng.integers(1, args.num_classes, n).astype(np.int64))})
        return images, targets

    seconds = []
    for step in range(args.iterations + 2):
        images, targets = batch()
        start = time.perf_counter()
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(json.dumps({"mode": "peer_train", "model": "torchvision ssd300_vgg16", "num_classes": args.num_classes,
                      "threads": args.threads, "channels_last": args.channels_last, "batch": args.batch,
                      "step_ms": round(1e3 * median, 1), "images_per_sec": round(args.batch / median, 3)}))


if __name__ == "__main__":
    main()
