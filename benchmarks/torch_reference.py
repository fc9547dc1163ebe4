"""PyTorch eager reference of deepgen's GAN, VAE and RBM train steps, for speed comparison.

This is a straightforward PyTorch eager implementation of the two GAN train steps
(``mlpgan`` and ``dcgan``), the MLP VAE train step (``vae``) and the RBM CD-1 step
(``rbm``) -- written the way a
competent PyTorch user would write them (no torch.compile, no channels_last, torch's
default thread count) -- so that the JAX implementation in this project can be timed
against it on the same machine.

It needs torch installed in a SEPARATE virtual environment. torch is never a
dependency of this project; nothing in the project imports this file.

Setup and run (from the repository root):

    python3 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch==2.13.0 numpy
    /work/torchvenv/bin/python benchmarks/torch_reference.py \
        {mlpgan,dcgan,vae,rbm,charlstm,transformer} --batch 128 \
        [--steps 20] [--repeats 5] [--warmup 3] [--threads N] [--tuned] [--device cuda] \
        [--profile-layers]

Prints ONE JSON line:
    {"framework": "torch", "torch_version", "model", "batch", "steps_per_s",
     "examples_per_s", "compile_s": 0.0, "threads", "repeats"}
where steps_per_s is the median over ``repeats`` repetitions of
(``steps`` timed steps / elapsed seconds), after ``warmup`` untimed steps, and
examples_per_s = steps_per_s * batch.

One train step = one D update then one G update with the non-saturating loss
(BCEWithLogitsLoss; D: real->1, G(z).detach()->0; G: D(G(z))->1 with a fresh G
forward), two Adam optimizers (lr 2e-4, betas (0.5, 0.999)), models in train mode.
The GAN "real" batch is a fixed float tensor (B, 1, 28, 28) in [-1, 1].

VAE: encoder Linear(784,512)-ReLU-Linear(512,2*20) -> (mean, log-variance), decoder
Linear(20,512)-ReLU-Linear(512,784) -> Bernoulli logits. One train step, all inside the
timed step: dynamic binarization of a fixed uint8 batch (B, 28, 28, 1) of random pixels,
x = bernoulli(pixels / 255) drawn fresh each step; z = mean + exp(0.5 * logvar) * eps;
loss = batch mean of [sum over pixels of BCE-with-logits(logits, x) + analytic
KL(N(mean, var) || N(0, I)) summed over latent dims]; Adam lr 1e-3.

RBM: a 784-500 Bernoulli-Bernoulli RBM (W ~ N(0, 0.01^2), zero biases), one CD-1 step
under torch.no_grad on a fixed random binary batch v0 (B, 784) float in {0, 1}:
h0_prob = sigmoid(v0 W + b_h), h0 ~ Bernoulli(h0_prob); v1_prob = sigmoid(h0 W^T + b_v),
v1 ~ Bernoulli(v1_prob) (the visible units are sampled); h1_prob = sigmoid(v1 W + b_h);
gradient dW = (v0^T h0_prob - v1^T h1_prob) / B, db_v = mean(v0 - v1),
db_h = mean(h0_prob - h1_prob); classical momentum 0.5 with lr 0.1 and weight decay 2e-4
on W only: velocity = 0.5 * velocity + 0.1 * (grad - 2e-4 * W), param += velocity. The
step also returns the reconstruction error, the batch mean of sum over pixels of
(v0 - v1_prob)^2, as a tensor.

charlstm: nn.Embedding(65, 64) -> nn.LSTM(64, 256, 1 layer, batch_first) -> nn.Linear(256, 65)
on a fixed random batch of (B, 129) character ids: inputs the first 128, targets the last 128,
mean cross-entropy, Adam lr 2e-3 (torch's fused MKL-DNN LSTM kernel does the recurrence).
Compare with `python -m benchmarks.bench charlstm --batch 64`; examples are 128-char windows.

transformer: nanoGPT's baby GPT for CPU (4 layers, 4 heads, width 128, context 64, pre-norm,
learned positions, tied embeddings, GELU MLP, scaled_dot_product_attention, no dropout), AdamW
lr 1e-3 betas (0.9, 0.99); run with --batch 12 to match `python -m benchmarks.bench transformer`.

``--tuned`` is the second version, what a speed-minded PyTorch user would write: Adam and AdamW
with ``fused=True`` (one kernel per step for all parameters instead of a loop over them) and, for
the DCGAN, the networks and the batch in ``channels_last`` memory format (NHWC, as the JAX
models hold their images). The networks and the step's contents are the same; compare deepgen
against the faster of the two.

``--device cuda`` runs it on a GPU (every tensor and parameter made there, through
``torch.set_default_device``; each timed repetition ends in a ``.item()``, which waits for the
GPU). There ``--tuned`` also lets float32 matmuls use TF32 (``torch.set_float32_matmul_precision
('high')``), as XLA's GPU matmuls do by default (cuDNN convolutions use TF32 in PyTorch already).

``--profile-layers`` (dcgan) additionally prints one JSON line per conv /
conv-transpose / linear layer with the median forward+backward time of that layer
alone at the given batch (input requires_grad, so the input gradient is computed
as in training): {"layer": name, "fwd_bwd_ms": ...}.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

NOISE_DIM = 100
LATENT_DIM = 20
# gan_mnist's default DCGAN (its model.g_width, d_width, d_dropout); --g-width etc. for others
DCGAN_G_WIDTH, DCGAN_D_WIDTH, DCGAN_D_DROPOUT = 128, 32, 0.0


# --------------------------------------------------------------------------- models
class MLPGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(NOISE_DIM, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 784), nn.Tanh(),
        )

    def forward(self, z):
        return self.net(z).view(-1, 1, 28, 28)


class MLPDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 1),
        )

    def forward(self, x):
        return self.net(x)


class DCGenerator(nn.Module):
    def __init__(self, width=DCGAN_G_WIDTH):
        super().__init__()
        self.width = width
        self.fc = nn.Linear(NOISE_DIM, 7 * 7 * width, bias=False)
        self.bn0 = nn.BatchNorm1d(7 * 7 * width)
        self.deconv1 = nn.ConvTranspose2d(width, width // 2, 5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.deconv2 = nn.ConvTranspose2d(width // 2, width // 4, 5, stride=2, padding=2,
                                          output_padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 4)
        self.deconv3 = nn.ConvTranspose2d(width // 4, 1, 5, stride=2, padding=2, output_padding=1,
                                          bias=False)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, z):
        x = self.act(self.bn0(self.fc(z)))
        x = x.view(-1, self.width, 7, 7)
        x = self.act(self.bn1(self.deconv1(x)))   # 7x7
        x = self.act(self.bn2(self.deconv2(x)))   # 14x14
        return torch.tanh(self.deconv3(x))        # 28x28


class DCDiscriminator(nn.Module):
    def __init__(self, width=DCGAN_D_WIDTH, dropout=DCGAN_D_DROPOUT):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 5, stride=2, padding=2)              # 28 -> 14
        self.conv2 = nn.Conv2d(width, 2 * width, 5, stride=2, padding=2)      # 14 -> 7
        self.fc = nn.Linear(2 * width * 7 * 7, 1)
        self.act = nn.LeakyReLU(0.2)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        x = self.drop(self.act(self.conv1(x)))
        x = self.drop(self.act(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(),
            nn.Linear(512, 2 * LATENT_DIM),
        )
        self.decoder = nn.Sequential(
            nn.Linear(LATENT_DIM, 512), nn.ReLU(),
            nn.Linear(512, 784),
        )

    def forward(self, x):
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)   # reparameterization
        return self.decoder(z), mean, logvar   # Bernoulli logits (B, 784)


GANS = {
    "mlpgan": (MLPGenerator, MLPDiscriminator),
    "dcgan": (DCGenerator, DCDiscriminator),
}
MODELS = [*GANS, "vae", "rbm", "charlstm", "transformer"]
RBM_VISIBLE, RBM_HIDDEN = 784, 500
VOCAB, SEQ_LEN = 65, 128


class CharLSTM(nn.Module):
    """Embedding(65, 64) -> one-layer LSTM(64, 256) -> Linear(256, 65), batch first."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 64)
        self.lstm = nn.LSTM(64, 256, num_layers=1, batch_first=True)
        self.head = nn.Linear(256, VOCAB)

    def forward(self, x):
        return self.head(self.lstm(self.embed(x))[0])


class Block(nn.Module):
    """nanoGPT's pre-norm block (no dropout: the baby-GPT CPU recipe runs with dropout 0)."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.heads = heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class BabyGPT(nn.Module):
    """nanoGPT's shakespeare_char CPU recipe: 4 layers, 4 heads, width 128, context 64, learned
    positions, tied input/output embeddings."""

    def __init__(self, layers=4, heads=4, width=128, context=64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        return self.ln(self.blocks(h)) @ self.tok.weight.t()


def make_lm_step(model, opt):
    def step(tokens):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return (loss,)

    return step


# ----------------------------------------------------------------------- train step
OPTIMIZER_OPTIONS = {}  # {'fused': True} under --tuned


def adam(params, cls=torch.optim.Adam, **kwargs):
    return cls(params, **kwargs, **OPTIMIZER_OPTIONS)


def make_train_step(G, D, batch):
    criterion = nn.BCEWithLogitsLoss()
    opt_g = adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ones = torch.ones(batch, 1)
    zeros = torch.zeros(batch, 1)

    def step(real):
        # --- discriminator update: real -> 1, fake (detached) -> 0
        z = torch.randn(batch, NOISE_DIM)
        fake = G(z).detach()
        opt_d.zero_grad(set_to_none=True)
        d_loss = criterion(D(real), ones) + criterion(D(fake), zeros)
        d_loss.backward()
        opt_d.step()

        # --- generator update: D(G(z)) -> 1 (non-saturating), fresh G forward
        z = torch.randn(batch, NOISE_DIM)
        opt_g.zero_grad(set_to_none=True)
        g_loss = criterion(D(G(z)), ones)
        g_loss.backward()
        opt_g.step()
        return d_loss, g_loss

    return step


def make_vae_step(vae):
    opt = adam(vae.parameters(), lr=1e-3)

    def step(pixels):
        # dynamic binarization, fresh each step: uint8 (B, 28, 28, 1) -> {0, 1} (B, 784)
        x = torch.bernoulli(pixels.float() / 255).flatten(1)
        logits, mean, logvar = vae(x)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        loss = (rec + kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return (loss,)

    return step


def make_rbm_step(visible=RBM_VISIBLE, hidden=RBM_HIDDEN, lr=0.1, momentum=0.5,
                  weight_decay=2e-4):
    W = torch.randn(visible, hidden) * 0.01
    b_v = torch.zeros(visible)
    b_h = torch.zeros(hidden)
    vel_W, vel_v, vel_h = torch.zeros_like(W), torch.zeros_like(b_v), torch.zeros_like(b_h)

    @torch.no_grad()
    def step(v0):
        batch = v0.shape[0]
        h0_prob = torch.sigmoid(torch.addmm(b_h, v0, W))
        h0 = torch.bernoulli(h0_prob)
        v1_prob = torch.sigmoid(torch.addmm(b_v, h0, W.t()))
        v1 = torch.bernoulli(v1_prob)
        h1_prob = torch.sigmoid(torch.addmm(b_h, v1, W))

        grad_W = (v0.t() @ h0_prob).sub_(v1.t() @ h1_prob).div_(batch)
        grad_v = (v0 - v1).mean(0)
        grad_h = (h0_prob - h1_prob).mean(0)
        grad_W.sub_(W, alpha=weight_decay)

        vel_W.mul_(momentum).add_(grad_W, alpha=lr)
        vel_v.mul_(momentum).add_(grad_v, alpha=lr)
        vel_h.mul_(momentum).add_(grad_h, alpha=lr)
        W.add_(vel_W)
        b_v.add_(vel_v)
        b_h.add_(vel_h)

        recon = (v0 - v1_prob).pow_(2).sum(1).mean()
        return (recon,)

    return step


def self_check(G, D, batch):
    with torch.no_grad():
        x = G(torch.randn(batch, NOISE_DIM))
        assert x.shape == (batch, 1, 28, 28), x.shape
        assert float(x.abs().max()) <= 1.0
        y = D(x)
        assert y.shape == (batch, 1), y.shape


# ------------------------------------------------------------------ layer profiling
def _time_fwd_bwd(layer, x_shape, reps=20, warmup=3):
    times = []
    for i in range(warmup + reps):
        x = torch.randn(*x_shape, requires_grad=True)
        layer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = layer(x)
        out.backward(torch.ones_like(out))
        t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
    return statistics.median(times) * 1e3


def profile_layers(G, D, batch):
    B, g, d = batch, G.width, D.conv1.out_channels
    layers = [
        (f"G.fc Linear(100,{49 * g})", G.fc, (B, NOISE_DIM)),
        (f"G.deconv1 ConvT({g},{g // 2},5,s1) 7->7", G.deconv1, (B, g, 7, 7)),
        (f"G.deconv2 ConvT({g // 2},{g // 4},5,s2) 7->14", G.deconv2, (B, g // 2, 7, 7)),
        (f"G.deconv3 ConvT({g // 4},1,5,s2) 14->28", G.deconv3, (B, g // 4, 14, 14)),
        (f"D.conv1 Conv(1,{d},5,s2) 28->14", D.conv1, (B, 1, 28, 28)),
        (f"D.conv2 Conv({d},{2 * d},5,s2) 14->7", D.conv2, (B, d, 14, 14)),
        (f"D.fc Linear({98 * d},1)", D.fc, (B, 2 * d * 7 * 7)),
    ]
    for name, layer, shape in layers:
        ms = round(_time_fwd_bwd(layer, shape), 3)
        print(json.dumps({"layer": name, "fwd_bwd_ms": ms}), flush=True)


# ---------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; default: torch's default")
    p.add_argument("--tuned", action="store_true",
                   help="fused Adam; channels_last for the DCGAN (see above)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    p.add_argument("--profile-layers", action="store_true",
                   help="(dcgan) also print per-layer forward+backward times")
    p.add_argument("--g-width", type=int, default=DCGAN_G_WIDTH,
                   help="(dcgan) G's channels after its dense layer, gan_mnist's model.g_width")
    p.add_argument("--d-width", type=int, default=DCGAN_D_WIDTH,
                   help="(dcgan) D's first channels, gan_mnist's model.d_width")
    p.add_argument("--d-dropout", type=float, default=DCGAN_D_DROPOUT,
                   help="(dcgan) D's dropout, gan_mnist's model.d_dropout")
    args = p.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tuned:
        OPTIMIZER_OPTIONS["fused"] = True
        if args.device != "cpu":
            torch.set_float32_matmul_precision("high")
    torch.set_default_device(args.device)
    torch.manual_seed(0)

    if args.profile_layers and args.model != "dcgan":
        p.error("--profile-layers is only implemented for dcgan")

    if args.model == "vae":
        vae = VAE()
        vae.train()
        step = make_vae_step(vae)
        data = torch.randint(0, 256, (args.batch, 28, 28, 1), dtype=torch.uint8)   # pixels
    elif args.model == "rbm":
        step = make_rbm_step()
        data = torch.randint(0, 2, (args.batch, RBM_VISIBLE)).float()   # binary v0
    elif args.model == "charlstm":
        model = CharLSTM()
        step = make_lm_step(model, adam(model.parameters(), lr=2e-3))
        data = torch.randint(0, VOCAB, (args.batch, SEQ_LEN + 1))
    elif args.model == "transformer":
        model = BabyGPT()
        step = make_lm_step(model, adam(model.parameters(), torch.optim.AdamW, lr=1e-3,
                                        betas=(0.9, 0.99)))
        data = torch.randint(0, VOCAB, (args.batch, 64 + 1))
    else:
        gen_cls, disc_cls = GANS[args.model]
        G, D = ((gen_cls(args.g_width), disc_cls(args.d_width, args.d_dropout))
                if args.model == "dcgan" else (gen_cls(), disc_cls()))
        G.train()
        D.train()
        self_check(G, D, args.batch)
        if args.profile_layers:
            profile_layers(G, D, args.batch)
        data = torch.rand(args.batch, 1, 28, 28) * 2 - 1   # images in [-1, 1]
        if args.tuned and args.model == "dcgan":
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
            data = data.contiguous(memory_format=torch.channels_last)
        step = make_train_step(G, D, args.batch)

    for _ in range(args.warmup):
        step(data)

    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            losses = step(data)
        for loss in losses:   # waits for a GPU; eager CPU is synchronous
            loss.item()
        rates.append(args.steps / (time.perf_counter() - t0))

    steps_per_s = statistics.median(rates)
    print(json.dumps({
        "framework": "torch",
        "torch_version": torch.__version__,
        "model": args.model,
        "batch": args.batch,
        "steps_per_s": round(steps_per_s, 3),
        "examples_per_s": round(steps_per_s * args.batch, 1),
        "compile_s": 0.0,
        "threads": torch.get_num_threads(),
        "tuned": args.tuned,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "repeats": args.repeats,
    }), flush=True)


if __name__ == "__main__":
    main()
