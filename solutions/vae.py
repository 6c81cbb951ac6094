# GENERATED FILE: do not edit. `make release` exports it from solutions/part1_vae.md (the cells tagged export or
# module-only). Change the source notebook, then run `make release`.


import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator
from torch.utils.data import DataLoader, Subset, TensorDataset, random_split
from torchvision.utils import save_image

from . import course_utils
from .course_utils import make_grid, progress  # torchvision's make_grid, imported when first used


NUM_LEVELS = 16  # intensity levels of a 4-bit pixel
TRAIN_SIZE, VAL_SIZE = 54_000, 6_000
SPLIT_SEED = 42  # fixes the train/validation split, whatever the seed of the run


def to_4bit(images):
    """MNIST's uint8 images [N, 28, 28] -> 4-bit integer images [N, 1, 28, 28] (floor(16 p), at most 15)."""
    pixels = images.float() / 255
    return (pixels * NUM_LEVELS).floor().clamp(max=NUM_LEVELS - 1).long().unsqueeze(1)


def mnist_4bit(root=None):
    """The train (54,000), validation (6,000) and test (10,000) sets of (4-bit image, label) pairs."""
    def as_dataset(train):
        mnist = course_utils.mnist(train, root=root)
        return TensorDataset(to_4bit(mnist.data), mnist.targets)

    split = torch.Generator().manual_seed(SPLIT_SEED)
    train, val = random_split(as_dataset(train=True), [TRAIN_SIZE, VAL_SIZE], generator=split)
    return train, val, as_dataset(train=False)


def first(dataset, limit):
    """The first `limit` items of `dataset` (all of it if limit is None): a smaller budget for quick runs."""
    return dataset if limit is None else Subset(dataset, range(min(limit, len(dataset))))


def data_loaders(batch_size, root=None, train_limit=None, eval_limit=None):
    """DataLoaders of 4-bit MNIST: (train, validation, test); only the training set is shuffled."""
    train, val, test = mnist_4bit(root)
    return (DataLoader(first(train, train_limit), batch_size, shuffle=True),
            DataLoader(first(val, eval_limit), batch_size),
            DataLoader(first(test, eval_limit), batch_size))


def sample_reparameterize(mean, std):
    """A sample of N(mean, std^2), element by element, through which gradients reach mean and std.

    Args:
        mean: tensor of means, any shape.
        std: tensor of standard deviations (>= 0), the same shape as mean.
    Returns:
        z: a tensor of the same shape, one sample per element.
    """
    assert not (std < 0).any(), "sample_reparameterize got a negative standard deviation"
    epsilon = torch.randn_like(std)  # the only randomness, independent of the encoder
    z = mean + std * epsilon
    return z


def KLD(mean, log_std):
    """KL divergence between N(mean, exp(log_std)^2) and the unit Gaussian N(0, I), summed over the last dimension.

    Args:
        mean: tensor of shape [..., z_dim].
        log_std: tensor of the same shape.
    Returns:
        KLD: tensor of shape [...], one KL divergence per distribution.
    """
    per_dimension = 0.5 * (torch.exp(2 * log_std) + mean**2 - 1 - 2 * log_std)
    KLD = per_dimension.sum(dim=-1)
    return KLD


def elbo_to_bpd(elbo, img_shape):
    """Bits per dimension of a negative log-likelihood (or negative ELBO) given in nats per image.

    Args:
        elbo: tensor (any shape, e.g. [B] or a scalar): negative ELBO in nats, one value per image.
        img_shape: the shape of the image batch, [B, C, H, W].
    Returns:
        bpd: tensor of the same shape as elbo.
    """
    num_dimensions = math.prod(img_shape[1:])
    bpd = elbo / (math.log(2) * num_dimensions)
    return bpd


class CNNEncoder(nn.Module):
    def __init__(self, num_input_channels=1, num_filters=32, z_dim=20):
        """Convolutional encoder: a 4-bit image [B, C, 28, 28] -> (mean, log_std) of q(z|x), each [B, z_dim].

        Args:
            num_input_channels: channels of the images (1 for MNIST).
            num_filters: channels of the first convolutions; the deeper ones use twice as many.
            z_dim: dimension of the latent space.
        """
        super().__init__()
        c = num_filters
        self.net = nn.Sequential(
            nn.Conv2d(num_input_channels, c, kernel_size=3, padding=1, stride=2), nn.GELU(),  # 28 -> 14
            nn.Conv2d(c, c, kernel_size=3, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, kernel_size=3, padding=1, stride=2), nn.GELU(),  # 14 -> 7
            nn.Conv2d(2 * c, 2 * c, kernel_size=3, padding=1), nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, kernel_size=3, padding=1, stride=2), nn.GELU(),  # 7 -> 4
            nn.Flatten(),
            nn.Linear(2 * c * 4 * 4, 2 * z_dim),  # the mean and the log std, side by side
        )

    def forward(self, x):
        """
        Args:
            x: integer images [B, C, 28, 28] with levels 0..15.
        Returns:
            mean, log_std: tensors [B, z_dim].
        """
        x = x.float() / (NUM_LEVELS - 1) * 2 - 1  # levels 0..15 -> [-1, 1]
        mean, log_std = self.net(x).chunk(2, dim=-1)
        return mean, log_std


class CNNDecoder(nn.Module):
    def __init__(self, num_input_channels=16, num_filters=32, z_dim=20):
        """Convolutional decoder: codes [B, z_dim] -> logits [B, num_input_channels, 28, 28].

        Args:
            num_input_channels: number of intensity levels of a pixel (16), one logit per level.
            num_filters: channels of the last convolutions; the first ones use twice as many.
            z_dim: dimension of the latent space.
        """
        super().__init__()
        c = num_filters
        self.linear = nn.Sequential(nn.Linear(z_dim, 2 * c * 4 * 4), nn.GELU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * c, 2 * c, kernel_size=3, padding=1, stride=2), nn.GELU(),  # 4 -> 7
            nn.Conv2d(2 * c, 2 * c, kernel_size=3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(2 * c, c, kernel_size=3, padding=1, stride=2, output_padding=1), nn.GELU(),  # 7 -> 14
            nn.Conv2d(c, c, kernel_size=3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(c, num_input_channels, kernel_size=3, padding=1, stride=2, output_padding=1),  # 28
        )

    def forward(self, z):
        """
        Args:
            z: codes [B, z_dim].
        Returns:
            x: logits [B, num_input_channels, 28, 28], not normalized (no softmax).
        """
        x = self.linear(z).reshape(z.shape[0], -1, 4, 4)
        x = self.net(x)
        return x


class VAE(nn.Module):
    def __init__(self, num_filters, z_dim, lr):
        """A VAE with a convolutional encoder and decoder for 4-bit images.

        Args:
            num_filters: channels of the convolutions in the encoder and the decoder.
            z_dim: dimension of the latent space.
            lr: learning rate of the Adam optimizer that trains it (see make_optimizer).
        """
        super().__init__()
        self.z_dim = z_dim
        self.lr = lr
        self.encoder = CNNEncoder(z_dim=z_dim, num_filters=num_filters)
        self.decoder = CNNDecoder(z_dim=z_dim, num_filters=num_filters)

    @property
    def device(self):
        """The device of the model's parameters: where its inputs must be."""
        return next(self.parameters()).device

    def forward(self, imgs):
        """The loss terms and bits per dimension of a batch of 4-bit images [B, 1, 28, 28].

        Returns:
            L_rec: reconstruction loss (scalar), the negative log-likelihood summed over pixels, batch average.
            L_reg: regularization loss (scalar), the KL divergence to the prior, batch average.
            bpd: bits per dimension (scalar) of L_rec + L_reg: the training loss.
        """
        mean, log_std = self.encoder(imgs)
        z = sample_reparameterize(mean, torch.exp(log_std))
        logits = self.decoder(z)
        nll_per_pixel = F.cross_entropy(logits, imgs.squeeze(1).long(), reduction="none")  # [B, 28, 28]
        L_rec = nll_per_pixel.sum(dim=(1, 2)).mean()
        L_reg = KLD(mean, log_std).mean()
        bpd = elbo_to_bpd(L_rec + L_reg, imgs.shape)
        return L_rec, L_reg, bpd

    @torch.no_grad()
    def sample(self, batch_size):
        """Sample `batch_size` 4-bit images [B, 1, 28, 28] (integers 0..15) from the model."""
        z = torch.randn(batch_size, self.z_dim, device=self.device)
        logits = self.decoder(z)  # [B, 16, 28, 28]
        probs = logits.softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # one row per pixel
        x_samples = torch.multinomial(probs, num_samples=1).reshape(batch_size, 1, *logits.shape[2:])
        return x_samples


def train_vae(model, train_loader, optimizer):
    """Train `model` for one epoch on `train_loader`, minimizing the bpd it returns.

    Args:
        model: a module with a `device` whose forward(imgs) returns (L_rec, L_reg, bpd).
        train_loader: an iterable of (imgs, labels) batches, with a length (the number of batches).
        optimizer: the optimizer of the model's parameters.
    Returns:
        average_bpd, average_rec_loss, average_reg_loss: floats, averages over the batches.
    """
    model.train()
    totals = torch.zeros(3)  # running sums of bpd, L_rec and L_reg
    for imgs, _ in train_loader:
        L_rec, L_reg, bpd = model(imgs.to(model.device))
        optimizer.zero_grad()  # backward() adds to the gradients of the previous step unless they are cleared
        bpd.backward()
        optimizer.step()
        totals += torch.tensor([bpd.item(), L_rec.item(), L_reg.item()])
    average_bpd, average_rec_loss, average_reg_loss = (totals / len(train_loader)).tolist()
    return average_bpd, average_rec_loss, average_reg_loss


@torch.no_grad()
def test_vae(model, data_loader):
    """Evaluate `model` on `data_loader` without changing it.

    Args:
        model: a module with a `device` whose forward(imgs) returns (L_rec, L_reg, bpd).
        data_loader: an iterable of (imgs, labels) batches, with a length (the number of batches).
    Returns:
        average_bpd, average_rec_loss, average_reg_loss: floats, averages over the batches.
    """
    model.eval()  # no dropout or batch norm here, but a model that has them needs it
    totals = torch.zeros(3)  # running sums of bpd, L_rec and L_reg
    for imgs, _ in data_loader:
        L_rec, L_reg, bpd = model(imgs.to(model.device))
        totals += torch.tensor([bpd.item(), L_rec.item(), L_reg.item()])
    average_bpd, average_rec_loss, average_reg_loss = (totals / len(data_loader)).tolist()
    return average_bpd, average_rec_loss, average_reg_loss


@dataclass
class VAEConfig:
    z_dim: int = 20
    num_filters: int = 32
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 80
    train_limit: int = None  # use only the first N training images (a smaller budget)
    eval_limit: int = None  # use only the first N validation and test images
    sample_epochs: tuple = (0, 10)  # sample grids after these epochs (0: before training) and the last one
    seed: int = 42
    data_dir: str = None  # None: course_utils.data_root()


def make_optimizer(model):
    return torch.optim.Adam(model.parameters(), lr=model.lr)


def sample_grid(model, num_samples=64):
    """An image grid of samples from the model, levels scaled to [0, 1]."""
    samples = model.sample(num_samples)
    return make_grid(samples.float() / (NUM_LEVELS - 1), nrow=8, pad_value=0.5).cpu()


def fit(config, device=None, checkpoint=None, resume=False):
    """Train a VAE as `config` says.

    checkpoint, if given, is a file where the training state is saved after every epoch; with resume=True the
    run goes on from it (the same run as one without a stop, on the same machine).

    Returns:
        model: the trained VAE.
        metrics: a JSON-ready dict: the config, and per epoch the train/val/test bpd and the seconds that its
            training pass took (evaluation excluded).
        samples: {epoch: image grid of samples after that epoch}.
    """
    course_utils.seed_everything(config.seed)
    device = device or course_utils.default_device()
    train_loader, val_loader, test_loader = data_loaders(
        config.batch_size, config.data_dir, config.train_limit, config.eval_limit)
    model = VAE(config.num_filters, config.z_dim, config.lr).to(device)
    optimizer = make_optimizer(model)
    metrics = dict(config=asdict(config), device=str(device), epoch=[], train_bpd=[], val_bpd=[], test_bpd=[],
                   seconds_per_epoch=[])
    samples = {0: sample_grid(model)}
    first_epoch = 1
    if resume:
        state = course_utils.load_training_state(checkpoint)
        if {**state["metrics"]["config"], "epochs": config.epochs, "data_dir": config.data_dir} != asdict(config):
            raise SystemExit(f"{checkpoint} was trained with other options: resume with the same ones.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        metrics, samples, first_epoch = state["metrics"], state["samples"], state["epoch"] + 1
    for epoch in range(first_epoch, config.epochs + 1):
        batches = progress(train_loader, desc=f"epoch {epoch}/{config.epochs}", leave=False)
        start = time.perf_counter()
        train_bpd = train_vae(model, batches, optimizer)[0]
        seconds = time.perf_counter() - start
        val_bpd, test_bpd = test_vae(model, val_loader)[0], test_vae(model, test_loader)[0]
        row = dict(epoch=epoch, train_bpd=train_bpd, val_bpd=val_bpd, test_bpd=test_bpd, seconds_per_epoch=seconds)
        for key, value in row.items():
            metrics[key].append(value)
        print(f"epoch {epoch}: train {train_bpd:.4f} bpd, val {val_bpd:.4f} bpd, test {test_bpd:.4f} bpd "
              f"({seconds:.0f} s)", flush=True)
        if epoch in config.sample_epochs or epoch == config.epochs:
            samples[epoch] = sample_grid(model)
        if checkpoint is not None:
            course_utils.save_training_state(checkpoint, epoch=epoch, model=model.state_dict(),
                                             optimizer=optimizer.state_dict(), metrics=metrics, samples=samples)
    return model, metrics, samples


def plot_bpd_curves(metrics):
    """Train, validation and test bpd per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for split in ("train", "val", "test"):
        ax.plot(metrics["epoch"], metrics[f"{split}_bpd"], marker="o", label=split)
    ax.set(xlabel="epoch", ylabel="bits per dimension", title=f"VAE, z_dim={metrics['config']['z_dim']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.legend()
    return fig


def show_image_grids(grids, size=4):
    """One figure with image grids side by side; `grids` maps each title to its grid."""
    fig, axes = plt.subplots(1, len(grids), figsize=(size * len(grids), size), squeeze=False)
    for ax, (title, grid) in zip(axes[0], grids.items()):
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(title)
        ax.axis("off")
    return fig


@torch.no_grad()
def visualize_manifold(decoder, grid_size=20):
    """The decoder's expected images on a grid_size x grid_size grid of 2-dimensional codes.

    Args:
        decoder: a decoder of 2-dimensional codes, returning logits [B, 16, 28, 28].
        grid_size: the number of codes along each axis.
    Returns:
        img_grid: an image grid [3, H, W] (torchvision's make_grid with nrow=grid_size) of the expected
            images, values in [0, 1].
    """
    device = next(decoder.parameters()).device
    quantiles = (torch.arange(grid_size, dtype=torch.float32) + 0.5) / grid_size
    values = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)
    rows, columns = torch.meshgrid(values, values, indexing="ij")
    z = torch.stack([rows.flatten(), columns.flatten()], dim=1).to(device)
    probs = decoder(z).softmax(dim=1)
    levels = torch.arange(probs.shape[1], dtype=probs.dtype, device=device).reshape(1, -1, 1, 1)
    expected_imgs = (probs * levels).sum(dim=1, keepdim=True) / (probs.shape[1] - 1)
    img_grid = make_grid(expected_imgs, nrow=grid_size, pad_value=0.5).cpu()
    return img_grid


def parse_config(argv=None):
    """The VAEConfig and the output folder that the command line asks for."""
    defaults = VAEConfig()
    parser = argparse.ArgumentParser(
        prog="python -m solutions.vae", description="Train the Part 1 VAE on 4-bit MNIST and save its results.")
    parser.add_argument("--z-dim", type=int, default=defaults.z_dim, help="latent dimension (default: %(default)s)")
    parser.add_argument("--num-filters", type=int, default=defaults.num_filters,
                        help="channels of the convolutions (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="(default: %(default)s)")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="train on the first N of the 54,000 training images only (default: all)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate on the first N validation and test images only (default: all)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help=f"folder that holds MNIST/raw/ (default: ${course_utils.DATA_DIR_VARIABLE} or "
                             f"{course_utils.DEFAULT_DATA_DIR})")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda (default: a GPU if there is one)")
    parser.add_argument("--out", default="runs/vae", help="output folder (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="go on from <out>/checkpoint.pt, saved after every epoch (give the same options)")
    args = vars(parser.parse_args(argv))
    out, device, resume = Path(args.pop("out")), args.pop("device"), args.pop("resume")
    args["data_dir"] = str(course_utils.data_root(args["data_dir"]))
    return VAEConfig(**args), out, device, resume


def save_results(out, model, metrics, samples):
    """Write the metrics, the weights, the bpd curves, the sample grids and (for z_dim 2) the manifold to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    torch.save(model.state_dict(), out / "model.pt")  # loads into VAE(num_filters, z_dim, lr) of the same config
    plot_bpd_curves(metrics).savefig(out / "bpd_curves.png", dpi=100, bbox_inches="tight")
    for epoch, grid in samples.items():
        save_image(grid, out / f"samples_epoch_{epoch:03d}.png")
    if model.z_dim == 2:
        save_image(visualize_manifold(model.decoder), out / "manifold.png")
    plt.close("all")


def warm_up(config, device, steps=3):
    """A few training steps of a throwaway VAE on random images, so that the first epoch does not count the
    one-time costs of a process's first steps (oneDNN choosing and building its convolution kernels for each
    shape, memory touched for the first time). The random number generators are restored: the run is the same
    without it."""
    with torch.random.fork_rng():
        model = VAE(config.num_filters, config.z_dim, config.lr).to(device)
        optimizer = make_optimizer(model)
        imgs = torch.randint(NUM_LEVELS, (config.batch_size, 1, 28, 28), device=device)
        for _ in range(steps):
            optimizer.zero_grad()
            model(imgs)[2].backward()
            optimizer.step()


def add_timings(metrics):
    """The first epoch's training seconds and the median of the later ones (None after a single epoch)."""
    seconds = metrics["seconds_per_epoch"]
    metrics["first_epoch_seconds"] = seconds[0]
    metrics["steady_seconds_per_epoch"] = statistics.median(seconds[1:]) if len(seconds) > 1 else None


def main(argv=None):
    config, out, device, resume = parse_config(argv)
    device = torch.device(device) if device else course_utils.default_device()
    warm_up(config, device)
    try:
        model, metrics, samples = fit(config, device, checkpoint=out / "checkpoint.pt", resume=resume)
    except course_utils.DataNotFoundError as error:
        raise SystemExit(f"error: {error}")
    add_timings(metrics)
    save_results(out, model, metrics, samples)
    steady = metrics["steady_seconds_per_epoch"]
    print(f"final test bpd {metrics['test_bpd'][-1]:.4f}; training took {metrics['first_epoch_seconds']:.1f} s "
          f"for the first epoch" + ("" if steady is None else f", {steady:.1f} s per later epoch (median)")
          + f"; results in {out}/")


if __name__ == "__main__":
    main()
