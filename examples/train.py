"""A small, fixed-seed training run for the quick start: a two-layer network fitted to
synthetic data for 50 steps. The final loss is the same to the last digit wherever the
snapshot runs on CPU. With /ckpt mounted, the weights are saved there."""

import os

import torch

torch.manual_seed(0)
torch.set_num_threads(1)
device = "cuda" if torch.cuda.is_available() else "cpu"
X = torch.randn(256, 16)
w = torch.randn(16, 1)
y = X @ w + 0.1 * torch.randn(256, 1)
X, y = X.to(device), y.to(device)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
for step in range(50):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(X), y)
    loss.backward()
    opt.step()
    if step % 10 == 0:
        print(f"step {step:2d} loss {loss.item():.6f}", flush=True)
print(f"torch {torch.__version__} on {device}: final loss {loss.item()!r}")
if os.path.isdir("/ckpt"):
    torch.save(model.state_dict(), "/ckpt/model.pt")
    print("checkpoint written to /ckpt/model.pt")
