# GENERATED FILE: do not edit. `make release` exports it from solutions/part2_aae.md (the cells tagged export or
# module-only). Change the source notebook, then run `make release`.


import argparse
import itertools
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator
from torch import nn
from torch.utils.data import DataLoader

from .course_utils import DataNotFoundError, data_root, default_device, load_training_state, make_grid, mnist, progress, save_training_state, seed_everything


def mnist_loader(train=True, batch_size=64, data_dir=None):
    """MNIST in [-1, 1]: the 60,000 training images (shuffled) or the 10,000 test images, in batches."""
    from torchvision import transforms  # here, not at the top: the autograder, which loads no data, skips it

    to_minus_one_one = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    dataset = mnist(train, transform=to_minus_one_one, root=data_dir)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train)


def show_grid(images, title=None, nrow=8):
    """A figure of images in [-1, 1] on a grid, nrow images per row."""
    grid = make_grid(images.detach().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1)
    rows = grid.shape[1] / grid.shape[2] * nrow
    figure, axes = plt.subplots(figsize=(0.5 * nrow, 0.5 * rows + 0.4))
    axes.imshow(grid.permute(1, 2, 0).numpy())
    axes.set_axis_off()
    if title:
        axes.set_title(title)
    return figure


class ConvEncoder(nn.Module):
    """Deterministic encoder E: images [B, 1, 28, 28] in [-1, 1] -> codes [B, z_dim]."""

    def __init__(self, z_dim, num_filters=16):
        super().__init__()
        c = num_filters
        self.net = nn.Sequential(
            nn.Conv2d(1, c, kernel_size=3, stride=2, padding=1),  # 28x28 -> 14x14
            nn.GELU(),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1),  # 14x14 -> 7x7
            nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, kernel_size=3, stride=2, padding=1),  # 7x7 -> 4x4
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(2 * c * 4 * 4, z_dim),  # no activation: codes must be free to match N(0, I)
        )

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """Decoder R: codes [B, z_dim] -> images [B, 1, 28, 28] in [-1, 1]."""

    def __init__(self, z_dim, num_filters=16):
        super().__init__()
        c = num_filters
        self.net = nn.Sequential(
            nn.Linear(z_dim, 2 * c * 4 * 4),
            nn.GELU(),
            nn.Unflatten(1, (2 * c, 4, 4)),
            nn.ConvTranspose2d(2 * c, 2 * c, kernel_size=3, stride=2, padding=1),  # 4x4 -> 7x7
            nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, kernel_size=3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(2 * c, c, kernel_size=3, stride=2, padding=1, output_padding=1),  # 7x7 -> 14x14
            nn.GELU(),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(c, 1, kernel_size=3, stride=2, padding=1, output_padding=1),  # 14x14 -> 28x28
            nn.Tanh(),  # the images are in [-1, 1]
        )

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    """D: codes [B, z_dim] -> logits [B, 1], positive when D believes the code was drawn from the prior."""

    def __init__(self, z_dim, hidden_units=512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden_units),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_units, hidden_units),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_units, 1),  # a logit: the sigmoid is inside the loss
        )

    def forward(self, z):
        return self.net(z)


class AdversarialAE(nn.Module):
    """An autoencoder whose codes a discriminator pushes toward the prior N(0, I)."""

    def __init__(self, z_dim=8):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = ConvEncoder(z_dim)
        self.decoder = ConvDecoder(z_dim)
        self.discriminator = Discriminator(z_dim)

    def forward(self, x):
        """Images x [B, 1, 28, 28] -> (reconstructions recon_x [B, 1, 28, 28], codes z [B, z_dim])."""
        z = self.encoder(x)
        recon_x = self.decoder(z)
        return recon_x, z

    def get_loss_autoencoder(self, x, recon_x, z_fake, lambda_=1):
        """The encoder's and decoder's loss lambda_ * recon_loss + (1 - lambda_) * gen_loss, and a logging dict.

        recon_loss: the mean squared error between x and recon_x, averaged over pixels and images.
        gen_loss: binary cross-entropy of the discriminator's logits for the codes z_fake [B, z_dim]
            against the label "real" (1), averaged over the batch.
        """
        recon_loss = F.mse_loss(recon_x, x)
        logits_fake = self.discriminator(z_fake)
        gen_loss = F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))
        ae_loss = lambda_ * recon_loss + (1 - lambda_) * gen_loss
        logging_dict = {"gen_loss": gen_loss.detach(), "recon_loss": recon_loss.detach(),
                        "ae_loss": ae_loss.detach()}
        return ae_loss, logging_dict

    def get_loss_discriminator(self, z_fake):
        """The discriminator's loss loss_real + loss_fake on the encoder's codes z_fake [B, z_dim], and a logging dict.

        loss_real: binary cross-entropy for B codes drawn from the prior N(0, I), label "real" (1).
        loss_fake: binary cross-entropy for the codes z_fake, label "fake" (0).
        accuracy: the fraction of the 2B codes classified right (real: logit > 0, fake: logit < 0).
        """
        z_real = torch.randn_like(z_fake)
        logits_real = self.discriminator(z_real)
        logits_fake = self.discriminator(z_fake)
        loss_real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
        loss_fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        disc_loss = loss_real + loss_fake
        correct = torch.cat([logits_real > 0, logits_fake < 0])
        accuracy = correct.float().mean()
        logging_dict = {"disc_loss": disc_loss.detach(), "loss_real": loss_real.detach(),
                        "loss_fake": loss_fake.detach(), "accuracy": accuracy}
        return disc_loss, logging_dict

    @torch.no_grad()
    def sample(self, batch_size):
        """batch_size new images [B, 1, 28, 28]: decoded draws from the prior N(0, I)."""
        z = torch.randn(batch_size, self.z_dim, device=self.device)
        x = self.decoder(z)
        return x

    @property
    def device(self):
        return next(self.parameters()).device


def make_optimizers(model, ae_lr=1e-3, disc_lr=5e-3, disc_optimizer="sgd"):
    """Adam (beta1 = 0.5) for the encoder and the decoder; SGD (or Adam) for the discriminator."""
    autoencoder_parameters = [*model.encoder.parameters(), *model.decoder.parameters()]
    optimizer_ae = torch.optim.Adam(autoencoder_parameters, lr=ae_lr, betas=(0.5, 0.999))
    if disc_optimizer == "adam":
        optimizer_disc = torch.optim.Adam(model.discriminator.parameters(), lr=disc_lr, betas=(0.5, 0.999))
    elif disc_optimizer == "sgd":
        optimizer_disc = torch.optim.SGD(model.discriminator.parameters(), lr=disc_lr)
    else:
        raise ValueError(f"disc_optimizer should be 'sgd' or 'adam', not {disc_optimizer!r}")
    return optimizer_ae, optimizer_disc


def train_aae(model, train_loader, optimizer_ae, optimizer_disc, lambda_=1):
    """Train for one pass over train_loader; return the mean over batches of every logged value.

    Per batch (x, labels): an autoencoder step with optimizer_ae on model.get_loss_autoencoder, then a
    discriminator step with optimizer_disc on model.get_loss_discriminator for the detached codes of that step.
    Merge the two logging dicts into one dict `logs` per batch: the loop averages its values.
    """
    model.train()
    sums, batches = {}, 0
    for x, _ in train_loader:
        x = x.to(model.device)
        recon_x, z_fake = model(x)
        ae_loss, ae_logs = model.get_loss_autoencoder(x, recon_x, z_fake, lambda_)
        optimizer_ae.zero_grad()
        ae_loss.backward()
        optimizer_ae.step()

        disc_loss, disc_logs = model.get_loss_discriminator(z_fake.detach())
        optimizer_disc.zero_grad()  # drops the gradients the generator loss left on the discriminator
        disc_loss.backward()
        optimizer_disc.step()
        logs = {**ae_logs, **disc_logs}  # both logging dicts
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        batches += 1
    return {key: total / batches for key, total in sums.items()}


@dataclass
class AAEConfig:
    """The settings of one training run; the defaults are those of the reference run."""
    z_dim: int = 8
    lambda_: float = 0.995  # weight of the reconstruction loss; 1 - lambda_ weighs the generator loss
    batch_size: int = 64
    ae_lr: float = 1e-3
    disc_lr: float = 5e-3
    disc_optimizer: str = "sgd"  # or "adam"
    epochs: int = 100
    batches_per_epoch: int | None = None  # None: all 60,000 training images; fewer for a small budget
    sample_every: int = 5  # keep a grid of samples every this many epochs
    seed: int = 42


def train(config, data_dir=None, device=None, checkpoint=None, resume=False):
    """Train an AAE as config says; return the model, the per-epoch history and {epoch: samples}.

    checkpoint, if given, is a file where the training state is saved after every epoch; with resume=True the
    run goes on from it (the same run as one without a stop, on the same machine)."""
    seed_everything(config.seed)
    loader = mnist_loader(train=True, batch_size=config.batch_size, data_dir=data_dir)
    model = AdversarialAE(config.z_dim).to(device or default_device())
    optimizer_ae, optimizer_disc = make_optimizers(model, config.ae_lr, config.disc_lr, config.disc_optimizer)
    batches_per_epoch = min(config.batches_per_epoch or len(loader), len(loader))
    samples = {0: model.sample(64).cpu()}
    history = []
    if resume:
        state = load_training_state(checkpoint)
        if {**state["config"], "epochs": config.epochs} != asdict(config):
            raise SystemExit(f"{checkpoint} was trained with other options: resume with the same ones.")
        model.load_state_dict(state["model"])
        optimizer_ae.load_state_dict(state["optimizer_ae"])
        optimizer_disc.load_state_dict(state["optimizer_disc"])
        history, samples = state["history"], state["samples"]
    epochs = progress(range(len(history) + 1, config.epochs + 1), desc="epochs", initial=len(history),
                      total=config.epochs)
    for epoch in epochs:
        start = time.perf_counter()
        batches = progress(itertools.islice(loader, batches_per_epoch), total=batches_per_epoch,
                           desc=f"epoch {epoch}", leave=False)
        averages = train_aae(model, batches, optimizer_ae, optimizer_disc, config.lambda_)
        history.append({"epoch": epoch, "seconds": time.perf_counter() - start, **averages})
        epochs.set_postfix(recon_loss=f"{averages['recon_loss']:.4f}", disc_accuracy=f"{averages['accuracy']:.2f}")
        if epoch % config.sample_every == 0 or epoch == config.epochs:
            samples[epoch] = model.sample(64).cpu()
        if checkpoint is not None:
            save_training_state(
                checkpoint, config=asdict(config), model=model.state_dict(), optimizer_ae=optimizer_ae.state_dict(),
                optimizer_disc=optimizer_disc.state_dict(), history=history, samples=samples)
    return model, history, samples


def plot_history(history, title=""):
    """Reconstruction loss and discriminator accuracy per epoch."""
    epochs = [record["epoch"] for record in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_axes.plot(epochs, [record["recon_loss"] for record in history], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="reconstruction loss (MSE)", title=f"{title} reconstruction")
    accuracy_axes.plot(epochs, [record["accuracy"] for record in history], marker="o")
    accuracy_axes.axhline(0.5, color="gray", linestyle="--", label="chance")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title=f"{title} discriminator")
    accuracy_axes.legend()
    for axes in (loss_axes, accuracy_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    figure.tight_layout()
    return figure


@torch.no_grad()
def reconstructions(model, images):
    """The images followed by their reconstructions, for show_grid(..., nrow=len(images))."""
    model.eval()
    recon_x, _ = model(images.to(model.device))
    return torch.cat([images, recon_x.cpu()])


@torch.no_grad()
def encode(model, loader, max_images=5000):
    """The codes [N, z_dim] and the labels [N] of the first max_images images of loader."""
    model.eval()
    codes, labels = [], []
    for x, y in loader:
        codes.append(model.encoder(x.to(model.device)).cpu())
        labels.append(y)
        if sum(len(batch) for batch in labels) >= max_images:
            break
    return torch.cat(codes)[:max_images], torch.cat(labels)[:max_images]


def plot_latent_space(codes, labels, title="latent space"):
    """A scatter plot of 2-dimensional codes coloured by digit."""
    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    points = axes.scatter(codes[:, 0].numpy(), codes[:, 1].numpy(), c=labels.numpy(), cmap="tab10", s=3,
                          vmin=-0.5, vmax=9.5)  # one colour per digit, centred on the colour bar's ticks
    figure.colorbar(points, ticks=range(10), label="digit")
    axes.set(xlabel="$z_1$", ylabel="$z_2$", title=title)
    return figure


def warm_up(config, device, steps=3):
    """A few training steps of a throwaway AAE on random images, so that the first epoch does not count the
    one-time costs of a process's first steps (oneDNN choosing and building its convolution kernels for each
    shape, memory touched for the first time). The random number generators are restored: the run is the same
    without it."""
    with torch.random.fork_rng():
        model = AdversarialAE(config.z_dim).to(device)
        optimizer_ae, optimizer_disc = make_optimizers(model, config.ae_lr, config.disc_lr, config.disc_optimizer)
        images = torch.rand(config.batch_size, 1, 28, 28, device=device) * 2 - 1
        train_aae(model, [(images, None)] * steps, optimizer_ae, optimizer_disc, config.lambda_)


def timings(history):
    """The first epoch's seconds and the median of the later ones (None after a single epoch)."""
    seconds = [row["seconds"] for row in history]
    return {"first_epoch_seconds": seconds[0],
            "steady_seconds_per_epoch": statistics.median(seconds[1:]) if len(seconds) > 1 else None}


def save_figure(figure, path):
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)


def main(argv=None):
    defaults = AAEConfig()
    parser = argparse.ArgumentParser(prog="python -m solutions.aae",
                                     description="Train the adversarial autoencoder of Part 2 on MNIST.")
    parser.add_argument("--z-dim", type=int, default=defaults.z_dim, help="size of the codes (default: %(default)s)")
    parser.add_argument("--lambda", dest="lambda_", type=float, default=defaults.lambda_,
                        help="weight of the reconstruction loss; 1 trains a plain autoencoder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    parser.add_argument("--ae-lr", type=float, default=defaults.ae_lr,
                        help="learning rate of the encoder and decoder, Adam (default: %(default)s)")
    parser.add_argument("--disc-lr", type=float, default=defaults.disc_lr,
                        help="learning rate of the discriminator (default: %(default)s)")
    parser.add_argument("--disc-optimizer", choices=("sgd", "adam"), default=defaults.disc_optimizer,
                        help="optimizer of the discriminator (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="(default: %(default)s)")
    parser.add_argument("--batches-per-epoch", type=int, default=defaults.batches_per_epoch,
                        help="train on this many batches per epoch (default: all 60,000 images)")
    parser.add_argument("--sample-every", type=int, default=defaults.sample_every,
                        help="save samples every this many epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="folder that holds MNIST/raw/ (default: $DGM_DATA_DIR, else ./data)")
    parser.add_argument("--out", default="runs/aae", help="folder for metrics and figures (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is a GPU)")
    parser.add_argument("--resume", action="store_true",
                        help="go on from <out>/checkpoint.pt, saved after every epoch (give the same options)")
    args = parser.parse_args(argv)
    config = AAEConfig(**{key: value for key, value in vars(args).items() if key in AAEConfig.__dataclass_fields__})

    data_dir, out = data_root(args.data_dir), Path(args.out)
    device = torch.device(args.device) if args.device else default_device()
    warm_up(config, device)
    try:
        model, history, samples = train(config, data_dir=data_dir, device=device,
                                        checkpoint=out / "checkpoint.pt", resume=args.resume)
    except DataNotFoundError as error:
        raise SystemExit(f"error: {error}")

    out.mkdir(parents=True, exist_ok=True)
    timing = timings(history)
    (out / "metrics.json").write_text(json.dumps({"config": asdict(config), **timing, "history": history}, indent=1))
    torch.save(model.state_dict(), out / "model.pt")  # loads into AdversarialAE of the same config
    save_figure(plot_history(history), out / "losses.png")
    for epoch, images in samples.items():
        save_figure(show_grid(images, f"samples after {epoch} epochs"), out / f"samples_epoch_{epoch:03d}.png")
    test_loader = mnist_loader(train=False, batch_size=500, data_dir=data_dir)
    test_images = next(iter(test_loader))[0][:16]
    save_figure(show_grid(reconstructions(model, test_images), "test images and reconstructions", nrow=16),
                out / "reconstructions.png")
    if config.z_dim == 2:
        save_figure(plot_latent_space(*encode(model, test_loader), f"latent space, lambda {config.lambda_}"),
                    out / "latent_space.png")
    steady = timing["steady_seconds_per_epoch"]
    print(f"first epoch {timing['first_epoch_seconds']:.1f} s" + ("" if steady is None else
          f", later epochs {steady:.1f} s (median)") + f"; wrote metrics and figures to {out}")


if __name__ == "__main__":
    main()
