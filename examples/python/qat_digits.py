"""The demo of examples/cpp/qat_demo.cpp with the Python API: scikit-learn's
digits, a small CNN trained in float, then int8 / w4a8 / w2a8 / w1a8 by PTQ
(calibration only) and by QAT (fine-tuning with fake quantization), each
converted to a real quantized model. Prints the same table as the C++ demo,
with the same numbers for the same seed.

usage: python examples/python/qat_digits.py [digits.pt]
(without a file it reads the data set from scikit-learn directly)
"""

import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import qtorchext as q


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.fc1 = nn.Linear(64 * 3 * 3, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.conv2(h))
        h = self.relu3(self.fc1(h.flatten(1)))
        return self.fc2(h)


def load(path=None):
    if path:
        data = torch.load(path, weights_only=True)
        images, labels = data["images"], data["labels"]
    else:
        from sklearn.datasets import load_digits
        d = load_digits()
        images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(images.shape[0])
    test, train = perm[:360], perm[360:]
    return images[train], labels[train], images[test], labels[test]


def train(net, x, y, epochs, lr, freeze_bn_after=-1):
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    n, batch = x.shape[0], 32
    net.train()
    for epoch in range(epochs):
        if epoch == freeze_bn_after:
            q.freeze_bn_stats(net)
        order = torch.randperm(n)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            loss = F.cross_entropy(net(x.index_select(0, idx)), y.index_select(0, idx))
            loss.backward()
            opt.step()
    net.eval()


@torch.no_grad()
def accuracy(net, x, y):
    net.eval()
    return (net(x).argmax(1) == y).double().mean().item() * 100.0


def model_bytes(m):
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


@torch.no_grad()
def latency_ms(nets, x):
    """Median milliseconds of one forward pass over a batch of 64 images, for each model:
    5 rounds over all models of 40 timed passes each (after 5 untimed ones)."""
    batch = x[:64].contiguous()
    times = [[] for _ in nets]
    for _ in range(5):
        for net, t in zip(nets, times):
            for _ in range(5):
                net(batch)
            for _ in range(40):
                t0 = time.perf_counter()
                net(batch)
                t.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def prepare(net, preset):
    # (prepare_qat takes a model in training mode, as torch.ao's; the PTQ run switches to
    # eval mode before it calibrates)
    net = q.fuse_modules(net.train(), [["conv1", "bn1", "relu1"], ["conv2", "relu2"],
                                       ["fc1", "relu3"]])
    # every layer at the preset's precision, the first and the last included
    # (a dict such as {"": preset, "conv1": "int8"} could keep one at int8)
    return q.prepare_qat(net, preset)




def main(path=None):
    torch.manual_seed(0)
    train_x, train_y, test_x, test_y = load(path)
    print(f"digits: {train_x.shape[0]} training and {test_x.shape[0]} test images, 8x8; "
          f"CPU threads: {torch.get_num_threads()}\n")
    fp32 = Net()
    train(fp32, train_x, train_y, 20, 0.05)
    rows = [("FP32", "float", accuracy(fp32, test_x, test_y), model_bytes(fp32))]
    nets = [fp32]
    for c, config in enumerate(["int8", "w4a8", "w2a8", "w1a8"]):
        ptq = prepare(copy.deepcopy(fp32), config)
        ptq.eval()
        with torch.no_grad():
            for i in range(0, train_x.shape[0], 256):
                ptq(train_x[i:i + 256])
        q.disable_observer(ptq)
        ptq = q.convert(ptq)
        rows.append(("PTQ", config, accuracy(ptq, test_x, test_y), model_bytes(ptq)))
        nets.append(ptq)

        qat_net = prepare(copy.deepcopy(fp32), config)
        torch.manual_seed(100 + c)
        train(qat_net, train_x, train_y, 8, 0.01, freeze_bn_after=5)
        q.disable_observer(qat_net)
        qat_net = q.convert(qat_net)
        rows.append(("QAT", config, accuracy(qat_net, test_x, test_y), model_bytes(qat_net)))
        nets.append(qat_net)
    ms = latency_ms(nets, test_x)
    print("| run  | config | accuracy % |   bytes | ratio | ms / batch of 64 |")
    print("|------|--------|-----------:|--------:|------:|-----------------:|")
    for (run, config, acc, nbytes), t in zip(rows, ms):
        print(f"| {run:<4} | {config:<6} | {acc:10.2f} | {nbytes:7d} | {nbytes / rows[0][3]:5.3f} "
              f"| {t:16.3f} |")
    print("\nint8: int8 weights per channel, uint8 activations per tensor; w4a8 / w2a8 / w1a8:\n"
          "4-bit / 2-bit / binary (+-alpha) weights per channel, uint8 activations; all four\n"
          "layers quantized. bytes: the model's state dict; ratio: to FP32.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
