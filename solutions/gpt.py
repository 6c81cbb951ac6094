# GENERATED FILE: do not edit. `make release` exports it from solutions/part3_gpt.md (the cells tagged export or
# module-only). Change the source notebook, then run `make release`.


"""Part 3 of the course: a character-level GPT (minGPT-style), its training, and fast generation."""
import argparse
import json
import math
import sys
import time
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .course_utils import default_device, load_checkpoint, progress, seed_everything, text_file


class CharVocabulary:
    """The characters of a text, each mapped to an index (its rank in sorted order)."""

    def __init__(self, text):
        self.chars = "".join(sorted(set(text)))
        self.index = {char: i for i, char in enumerate(self.chars)}

    @property
    def size(self):
        return len(self.chars)

    def encode(self, text):
        """str -> LongTensor of indices."""
        return torch.tensor([self.index[char] for char in text], dtype=torch.long)

    def decode(self, indices):
        """Sequence (or 1-D tensor) of indices -> str."""
        return "".join(self.chars[i] for i in torch.as_tensor(indices).tolist())


def load_char_data(path=None, root=None, val_fraction=0.1):
    """(vocabulary, train_data, val_data) of a UTF-8 text (default: Grimms' Fairy Tales under the data root).

    The data are 1-D LongTensors of character indices; the last `val_fraction` of the text is validation.
    """
    text = text_file(path, root)
    vocabulary = CharVocabulary(text)
    data = vocabulary.encode(text)
    split = int(len(data) * (1 - val_fraction))
    return vocabulary, data[:split], data[split:]


def get_batch(data, block_size, batch_size, device="cpu"):
    """A batch of random windows: inputs [B, block_size] and targets, the same windows shifted by one."""
    starts = torch.randint(len(data) - block_size, (batch_size,))
    inputs = torch.stack([data[i:i + block_size] for i in starts])
    targets = torch.stack([data[i + 1:i + 1 + block_size] for i in starts])
    return inputs.to(device), targets.to(device)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position attends to itself and the positions before it."""

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "the width must split evenly into heads"
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # queries, keys and values of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)  # mixes the heads' outputs
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size))

    def split_heads(self, x):
        """Inputs [B, T, n_embd] -> queries, keys, values, each [B, n_head, T, head_dim]."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [3, B, n_head, T, head_dim] -> q, k, v

    def merge_heads(self, y):
        """The heads' outputs [B, n_head, T, head_dim] -> the layer's output [B, T, n_embd]."""
        B, n_head, T, head_dim = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, n_head * head_dim)))

    def forward(self, x):
        q, k, v = self.split_heads(x)
        T = q.size(2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
        scores = scores.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        weights = self.attn_dropout(F.softmax(scores, dim=-1))
        y = weights @ v
        return self.merge_heads(y)


@dataclass
class GPTConfig:
    """The shape of a GPT: vocabulary, context length (block size), depth, heads, width and dropout; and two
    settings of speed, which change neither the parameters nor their names (a checkpoint loads either way)."""
    vocab_size: int
    block_size: int = 128
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 192
    dropout: float = 0.1
    fused_attention: bool = False  # PyTorch's fused attention kernel, not the course's (FusedCausalSelfAttention)
    bfloat16: bool = False  # matrix products in bfloat16, the rest in float32 (mixed precision, GPT.forward)


# minGPT's small models; the command-line trainer starts from one of them (default gpt-mini).
MODEL_TYPES = {
    "gpt-nano": dict(n_layer=3, n_head=3, n_embd=48),
    "gpt-micro": dict(n_layer=4, n_head=4, n_embd=128),
    "gpt-mini": dict(n_layer=6, n_head=6, n_embd=192),
}


class MLP(nn.Module):
    """The position-wise feed-forward network: widen 4x, GELU, project back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class FusedCausalSelfAttention(CausalSelfAttention):
    """CausalSelfAttention through PyTorch's fused kernel: the same outputs and gradients, up to rounding. It keeps
    the mask buffer, unused, so that both layers have the same state dict."""

    def forward(self, x):
        q, k, v = self.split_heads(x)
        dropout = self.attn_dropout.p if self.training else 0.0
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True))


class Block(nn.Module):
    """A transformer block: attention and MLP, each on a LayerNorm of the residual stream and added to it."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = FusedCausalSelfAttention(config) if config.fused_attention else CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


def choose_next_token(logits, temperature=1.0, do_sample=False, top_k=None):
    """Next tokens [B, 1] from the last position's logits [B, vocab_size]."""
    logits = logits / temperature
    if top_k is not None:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if do_sample:
        return torch.multinomial(probs, num_samples=1)
    return probs.argmax(dim=-1, keepdim=True)


class GPT(nn.Module):
    """A decoder-only transformer that predicts the next token at every position."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2's scaled initialisation: every block adds its two projections to the residual stream, so they
        # start smaller in deeper models and the stream's variance does not grow with depth.
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, idx, start=0):
        """Token plus position embeddings [B, T, n_embd] of idx [B, T] whose first token is at `start`."""
        positions = torch.arange(start, start + idx.size(1), device=idx.device)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))

    def forward(self, idx):
        """Next-token logits [B, T, vocab_size] at every position of idx [B, T], T <= block_size."""
        if idx.size(1) > self.config.block_size:
            raise ValueError(f"a context of {idx.size(1)} tokens is longer than the block size "
                             f"{self.config.block_size}")
        # config.bfloat16: mixed precision. Autocast multiplies the matrices in bfloat16 and keeps everything else
        # (parameters, gradients, the loss) in float32. Its cache of bfloat16 weights is off: the cache lives until
        # the outermost autocast region ends, so inside a caller's region (even a disabled one) a forward pass after
        # an optimizer step would use stale weights; casting them again costs little next to the products.
        precision = (torch.autocast(idx.device.type, dtype=torch.bfloat16, cache_enabled=False)
                     if self.config.bfloat16 else nullcontext())
        with precision:
            x = self.embed(idx)
            for block in self.transformer.h:
                x = block(x)
            logits = self.lm_head(self.transformer.ln_f(x))
        return logits.to(self.lm_head.weight.dtype)  # float32 again after bfloat16 products

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, do_sample=False, top_k=None):
        """idx [B, T] followed by max_new_tokens generated tokens: [B, T + max_new_tokens]."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]
            logits = self(context)[:, -1, :]
            idx = torch.cat((idx, choose_next_token(logits, temperature, do_sample, top_k)), dim=1)
        return idx


def configure_optimizer(model, learning_rate, weight_decay, betas):
    """AdamW that decays the weight matrices (linear layers, embeddings) and not the biases and LayerNorms."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


def next_token_loss(logits, targets):
    """Cross-entropy of logits [B, T, V] against targets [B, T], averaged over all B * T positions."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def train_step(model, optimizer, inputs, targets, grad_clip=1.0):
    """One optimizer update on one batch; returns the batch's loss before the update."""
    optimizer.zero_grad(set_to_none=True)
    loss = next_token_loss(model(inputs), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


@dataclass
class TrainConfig:
    """The training hyperparameters (the defaults of the command-line trainer)."""
    batch_size: int = 128
    max_iters: int = 5000
    learning_rate: float = 5e-4
    min_lr: float = 5e-5  # the cosine decay ends here, at max_iters
    warmup_iters: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20


def learning_rate_at(iteration, config):
    """Linear warmup over warmup_iters, then cosine decay from learning_rate to min_lr at max_iters."""
    if iteration < config.warmup_iters:
        return config.learning_rate * (iteration + 1) / config.warmup_iters
    decay_length = max(1, config.max_iters - config.warmup_iters)
    fraction_done = min(1.0, (iteration - config.warmup_iters) / decay_length)
    return config.min_lr + 0.5 * (1 + math.cos(math.pi * fraction_done)) * (config.learning_rate - config.min_lr)


@torch.no_grad()
def estimate_loss(model, data, batch_size, iters):
    """The mean next-token loss on `iters` random batches of `data`, in evaluation mode (no dropout)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = [next_token_loss(model(inputs), targets).item()
              for inputs, targets in (get_batch(data, model.config.block_size, batch_size, device)
                                      for _ in range(iters))]
    model.train(was_training)
    return sum(losses) / len(losses)


def train(model, train_data, val_data, config, after_evaluation=None, resume=None):
    """Train `model` for config.max_iters iterations; return the history of losses and timings.

    after_evaluation(iteration, history, optimizer), if given, runs after each evaluation (the command-line
    trainer saves a checkpoint and prints a sample there). resume, if given, is the training state a checkpoint
    saved (its "iteration", "history" and "optimizer"): training goes on after that iteration with the
    optimizer's moments and the history as they were.
    """
    optimizer = configure_optimizer(model, config.learning_rate, config.weight_decay, config.betas)
    device = next(model.parameters()).device
    history = {"iteration": [], "train_loss": [], "val_loss": [], "step_loss": [], "learning_rate": [],
               "train_seconds": 0.0, "train_seconds_at_evaluation": []}
    first = 1
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        history, first = resume["history"], resume["iteration"] + 1
    model.train()
    bar = progress(range(first, config.max_iters + 1), desc="training")
    for iteration in bar:
        learning_rate = learning_rate_at(iteration - 1, config)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        inputs, targets = get_batch(train_data, model.config.block_size, config.batch_size, device)
        started = time.perf_counter()
        loss = train_step(model, optimizer, inputs, targets, config.grad_clip)
        history["train_seconds"] += time.perf_counter() - started  # .item() waited for the GPU
        history["step_loss"].append(loss)
        history["learning_rate"].append(learning_rate)
        if iteration % config.eval_interval == 0 or iteration == config.max_iters:
            history["iteration"].append(iteration)
            history["train_loss"].append(estimate_loss(model, train_data, config.batch_size, config.eval_iters))
            history["val_loss"].append(estimate_loss(model, val_data, config.batch_size, config.eval_iters))
            history["train_seconds_at_evaluation"].append(history["train_seconds"])
            bar.set_postfix(train=f"{history['train_loss'][-1]:.3f}", val=f"{history['val_loss'][-1]:.3f}")
            if after_evaluation is not None:
                after_evaluation(iteration, history, optimizer)
    return history


def plot_losses(history):
    """The loss of every training batch, and the estimated training and validation losses."""
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = range(1, len(history["step_loss"]) + 1)
    axis.plot(steps, history["step_loss"], color="lightgray", linewidth=0.8, label="training batch")
    axis.plot(history["iteration"], history["train_loss"], "o-", label="training (estimate)")
    axis.plot(history["iteration"], history["val_loss"], "o-", label="validation (estimate)")
    axis.set_xlabel("iteration")
    axis.set_ylabel("cross-entropy (nats per character)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def sample_text(model, vocabulary, prompt="\n", length=500, **sampling):
    """`length` characters generated after `prompt` (sampling: temperature, do_sample, top_k)."""
    model.eval()
    device = next(model.parameters()).device
    idx = vocabulary.encode(prompt)[None].to(device)
    return vocabulary.decode(model.generate(idx, length, **sampling)[0, idx.size(1):])


class KeyValueCache:
    """The keys and values of every layer, preallocated for a whole block: [2, B, n_head, block_size, head_dim]
    per layer (keys, then values). Positions 0 .. length - 1 are filled."""

    def __init__(self, config, batch_size, like):
        shape = (config.n_layer, 2, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.layers = like.new_empty(shape).unbind(0)  # one view per layer; the dtype and device of `like`
        self.length = 0
        self.one_token = [OneTokenViews(layer) for layer in self.layers]

    def store(self, layer, keys_and_values):
        """Write `layer`'s keys and values [2, B, n_head, T_new, head_dim] of the next positions (one copy);
        return the layer's keys and values so far (views, no copies)."""
        end = self.length + keys_and_values.size(3)
        self.layers[layer].narrow(3, self.length, end - self.length).copy_(keys_and_values)
        return self.layers[layer].narrow(3, 0, end).unbind(0)


class OneTokenViews:
    """What the step of one new token needs in a layer whose cache is `cached` [2, B, n_head, block_size,
    head_dim], made once: a buffer [B, 3 * n_embd] for the query/key/value projection, seen as the query
    [B, n_head, 1, head_dim] and as the keys and values [2, B, n_head, head_dim], the cache's slot of each
    position, and its keys and values [B, n_head, block_size, head_dim]. A view costs about a microsecond; made
    at every step, they cost an eighth to a fifth of a token's time (gpt-mini, batch 1, CPU, measured side by
    side when this class was introduced)."""

    def __init__(self, cached):
        _, batch_size, n_head, _, head_dim = cached.shape
        self.qkv = cached.new_empty(batch_size, 3 * n_head * head_dim)
        query, self.keys_and_values = self.qkv.view(batch_size, 3, n_head, head_dim).transpose(0, 1).split([1, 2])
        self.query = query[0].unsqueeze(2)
        self.slots = cached.unbind(3)  # slots[position]: [2, B, n_head, head_dim]
        self.keys, self.values = cached.unbind(0)  # [B, n_head, block_size, head_dim]


def layer_norm_arguments(layer):
    return layer.normalized_shape, layer.weight, layer.bias, layer.eps


def linear_arguments(layer):
    """A Linear layer's bias and transposed weight, made once: torch.addmm(bias, x, weight.t()) is what F.linear
    computes for a matrix x, and F.linear would make the transposed view again at every call (see `linear`)."""
    return layer.bias, layer.weight.t()


def linear(x, arguments, out=None):
    """F.linear for a matrix x [N, in_features], given the layer's linear_arguments (into `out` if given).
    F.linear's own transpose and call cost about 2 us of each of the 24 products of a token of gpt-mini (torch
    profiler: aten::t and aten::linear)."""
    bias, weight_t = arguments
    return torch.addmm(bias, x, weight_t, out=out)


class BlockWeights:
    """A Block's tensors as plain attributes, for the functional calls of block_with_cache."""

    def __init__(self, block):
        self.n_head = block.attn.n_head
        self.ln_1, self.ln_2 = layer_norm_arguments(block.ln_1), layer_norm_arguments(block.ln_2)
        self.c_attn, self.attn_proj = linear_arguments(block.attn.c_attn), linear_arguments(block.attn.c_proj)
        self.c_fc, self.mlp_proj = linear_arguments(block.mlp.c_fc), linear_arguments(block.mlp.c_proj)


class GPTWeights:
    """The model's tensors as plain attributes, gathered once per call of generate_fast. Reading a parameter or
    a submodule of an nn.Module goes through Module.__getattr__, a few dictionary lookups in Python each time:
    about 25 per layer and token, about a tenth of the cached path's time for gpt-mini at batch 1 (measured)."""

    def __init__(self, model):
        transformer = model.transformer
        self.wte, self.wpe = transformer.wte.weight, transformer.wpe.weight
        self.blocks = [BlockWeights(block) for block in transformer.h]
        self.ln_f = layer_norm_arguments(transformer.ln_f)
        self.lm_head = model.lm_head.weight


def add_projection(x, y, arguments):
    """x + linear(y, arguments), written into x. torch.addmm would copy its bias into a new tensor before the
    product; addmm_ accumulates the product into x itself, then the bias is added."""
    bias, weight_t = arguments
    return x.addmm_(y, weight_t).add_(bias)


def attention_and_mlp_outputs(block, x, y):
    """The rest of Block.forward once attention has given y (its heads' outputs, in x's shape [N, n_embd]):
    project and add to the residual stream x, then the MLP's residual step. Updates x in place and returns it."""
    x = add_projection(x, y, block.attn_proj)
    return add_projection(x, F.gelu(linear(torch.layer_norm(x, *block.ln_2), block.c_fc)), block.mlp_proj)


def block_with_cache(block, x, cache, layer):
    """Block.forward in evaluation mode (`block`: its BlockWeights) on the new positions x [B, T_new, n_embd]
    that follow those in `cache`; stores their keys and values as layer number `layer`."""
    B, T, C = x.shape
    x = x.view(B * T, C)  # one row per position: the products are torch.addmm's
    qkv = linear(torch.layer_norm(x, *block.ln_1), block.c_attn)
    q, keys_and_values = qkv.view(B, T, 3, block.n_head, C // block.n_head).permute(2, 0, 3, 1, 4).split([1, 2])
    k, v = cache.store(layer, keys_and_values)
    # Only the prompt or a cropped window comes here (an empty cache, T > 1): queries and keys are the same
    # positions, and is_causal is exactly the causal mask.
    y = F.scaled_dot_product_attention(q[0], k, v, is_causal=True)
    return attention_and_mlp_outputs(block, x, y.transpose(1, 2).reshape(B * T, C)).view(B, T, C)


def block_one_token(block, x, views, position):
    """block_with_cache for one new token x [B, n_embd] at `position`, through the layer's OneTokenViews."""
    # The projection writes into the buffer that `views` sees as query, keys and values: no view per token.
    linear(torch.layer_norm(x, *block.ln_1), block.c_attn, out=views.qkv)
    views.slots[position].copy_(views.keys_and_values)
    keys, values = views.keys.narrow(2, 0, position + 1), views.values.narrow(2, 0, position + 1)
    y = F.scaled_dot_product_attention(views.query, keys, values)  # one query sees every cached position: no mask
    return attention_and_mlp_outputs(block, x, y.view(x.shape))


def forward_with_cache(weights, idx, cache):
    """The last position's logits [B, vocab_size] for the new tokens idx [B, T_new], extending `cache`
    (`weights`: the model's GPTWeights)."""
    position, T = cache.length, idx.size(1)
    if T == 1:
        x = torch.embedding(weights.wte, idx[:, 0]) + weights.wpe[position]
        for block, views in zip(weights.blocks, cache.one_token):
            x = block_one_token(block, x, views, position)
    else:
        assert position == 0, "a filled cache takes one new token at a time"
        x = torch.embedding(weights.wte, idx) + weights.wpe[:T]
        for layer, block in enumerate(weights.blocks):
            x = block_with_cache(block, x, cache, layer)
        x = x[:, -1]
    cache.length += T
    return F.linear(torch.layer_norm(x, *weights.ln_f), weights.lm_head)


@contextmanager
def without_onednn():
    """PyTorch's own CPU kernels instead of oneDNN's within the block. On CPU PyTorch hands exact GELU to oneDNN,
    whose call costs about 10 us at any size; PyTorch's own kernel takes 2 to 3 us for one token's 768 values
    (gpt-mini). Nothing else generate_fast runs goes to oneDNN."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def generate_fast(model, idx, max_new_tokens, temperature=1.0, do_sample=False, top_k=None):
    """GPT.generate with a key/value cache: the same tokens, each costing one position, not the context."""
    assert not model.training, "call model.eval() first: the cached path has no dropout"
    block_size = model.config.block_size
    batch_size, prompt_length = idx.shape
    tokens = idx.new_empty(batch_size, prompt_length + max_new_tokens)
    tokens[:, :prompt_length] = idx
    weights = GPTWeights(model)
    # inference_mode: no_grad, and less bookkeeping on each of the many small operations
    with torch.inference_mode(), without_onednn():
        cache = KeyValueCache(model.config, batch_size, like=weights.lm_head)
        for end in range(prompt_length, prompt_length + max_new_tokens):
            if end > block_size:
                # Cropped: every kept token moves one position back, the cache no longer applies. Recompute.
                cache.length = 0
                new_tokens = tokens[:, end - block_size:end]
            else:
                new_tokens = tokens[:, cache.length:end]
            logits = forward_with_cache(weights, new_tokens, cache)
            tokens[:, end:end + 1] = choose_next_token(logits, temperature, do_sample, top_k)
    return tokens


def bfloat16_pays(device, config):
    """Whether bfloat16 matrix products make training faster on `device`: on GPUs that have them; on CPUs with
    AVX-512 BF16 or AMX only for models of width 192 and more (gpt-mini: a step took about 1.45x less CPU time;
    width 128, the small configuration: a 2000-iteration run took 17% longer, the conversions cost more than the
    small products gain)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu_has_bfloat16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return device.type == "cpu" and cpu_has_bfloat16 and config.n_embd >= 192


def warm_up(model, data, config, steps=3):
    """A few training steps on a copy of `model`, then forgotten, so that the timed run does not count the
    one-time costs of a process's first steps (oneDNN choosing and building its kernels for each shape, memory
    touched for the first time). The random number generators are restored: the run is the same without it."""
    device = next(model.parameters()).device
    with torch.random.fork_rng():
        copy = deepcopy(model)
        optimizer = configure_optimizer(copy, config.learning_rate, config.weight_decay, config.betas)
        for _ in range(steps):
            inputs, targets = get_batch(data, model.config.block_size, config.batch_size, device)
            train_step(copy, optimizer, inputs, targets, config.grad_clip)


@torch.no_grad()
def whole_split_loss(model, data, batch_size=64):
    """The mean next-token loss over every consecutive window of `data` (block_size characters each, the last
    partial window dropped), in evaluation mode: unlike estimate_loss's random batches, the same number every
    time, so that published weights can be checked against it (tests/test_gpt.py)."""
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    starts = torch.arange(0, len(data) - block, block)
    losses = []
    for batch in starts.split(batch_size):
        inputs = torch.stack([data[i:i + block] for i in batch]).to(device)
        targets = torch.stack([data[i + 1:i + 1 + block] for i in batch]).to(device)
        losses.append(next_token_loss(model(inputs), targets).item() * len(batch))
    return sum(losses) / len(starts)


def interval_timings(evaluated_at, train_seconds):
    """Seconds per iteration of the first evaluation interval, and the median of the later ones (None if there
    are none): the cumulative training seconds `train_seconds` were read at the iterations `evaluated_at`."""
    starts = [0] + evaluated_at[:-1]
    previous = [0.0] + train_seconds[:-1]
    per_iteration = [(seconds - before) / (end - start)
                     for start, end, seconds, before in zip(starts, evaluated_at, train_seconds, previous)]
    later = sorted(per_iteration[1:])
    return per_iteration[0], later[len(later) // 2] if later else None


def parse_args(argv=None):
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m solutions.gpt",
        description="Train the character-level GPT of Part 3 on a UTF-8 text file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--text", help="a UTF-8 text file (default: Grimms' Fairy Tales in <data-dir>/text/)")
    parser.add_argument("--data-dir", default=None, help="the data folder (default: $DGM_DATA_DIR, else ./data)")
    parser.add_argument("--out", default="runs/gpt", help="where to write metrics, figures and the checkpoint")
    parser.add_argument("--resume", action="store_true",
                        help="go on from <out>/checkpoint.pt with its model, settings, optimizer and history "
                             "(the command line's model and training options are then ignored, except --device, "
                             "--course-attention, --precision and --sample-length)")
    model = parser.add_argument_group("model (a type, then overrides)")
    model.add_argument("--model", choices=list(MODEL_TYPES), default="gpt-mini")
    model.add_argument("--n-layer", type=int)
    model.add_argument("--n-head", type=int)
    model.add_argument("--n-embd", type=int)
    model.add_argument("--block-size", type=int, default=GPTConfig.block_size)
    model.add_argument("--dropout", type=float, default=GPTConfig.dropout)
    training = parser.add_argument_group("training")
    training.add_argument("--batch-size", type=int, default=defaults.batch_size)
    training.add_argument("--max-iters", type=int, default=defaults.max_iters)
    training.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    training.add_argument("--min-lr", type=float, default=defaults.min_lr)
    training.add_argument("--warmup-iters", type=int, default=defaults.warmup_iters)
    training.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    training.add_argument("--betas", type=float, nargs=2, default=defaults.betas)
    training.add_argument("--grad-clip", type=float, default=defaults.grad_clip)
    training.add_argument("--eval-interval", type=int, default=defaults.eval_interval)
    training.add_argument("--eval-iters", type=int, default=defaults.eval_iters)
    training.add_argument("--sample-length", type=int, default=300, help="characters sampled at each evaluation")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--device", help="cpu, cuda, ... (default: a GPU if there is one)")
    training.add_argument("--course-attention", action="store_true",
                          help="train with the notebook's explicit attention instead of the fused kernel")
    training.add_argument("--precision", choices=("auto", "bfloat16", "float32"), default="auto",
                          help="of the matrix products; auto: bfloat16 where it pays (bfloat16_pays)")
    return parser.parse_args(argv)


def configs_from_args(args, vocabulary):
    """The GPTConfig and TrainConfig the command line asks for."""
    shape = {**MODEL_TYPES[args.model],
             **{name: getattr(args, name) for name in ("n_layer", "n_head", "n_embd") if getattr(args, name)}}
    model_config = GPTConfig(vocab_size=vocabulary.size, block_size=args.block_size, dropout=args.dropout, **shape)
    train_config = TrainConfig(**{field.name: getattr(args, field.name) for field in fields(TrainConfig)})
    train_config.betas = tuple(train_config.betas)
    return model_config, train_config


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    checkpoint = load_checkpoint(out / "checkpoint.pt") if args.resume else None
    seed_everything(args.seed)
    device = torch.device(args.device) if args.device else default_device()
    vocabulary, train_data, val_data = load_char_data(args.text, args.data_dir)
    if checkpoint is None:
        model_config, train_config = configs_from_args(args, vocabulary)
    else:  # the run goes on as it started: its settings, not the command line's
        if checkpoint["vocabulary"] != vocabulary.chars:
            raise SystemExit(f"{out / 'checkpoint.pt'} was trained on another text: give the same --text.")
        model_config = GPTConfig(**checkpoint["model_config"])
        saved = checkpoint["train_config"]
        train_config = TrainConfig(**{**saved, "betas": tuple(saved["betas"])})  # JSON-like: a list
    # How to compute the model is always the command line's choice: neither setting changes the parameters.
    bfloat16 = args.precision == "bfloat16" or (args.precision == "auto" and bfloat16_pays(device, model_config))
    model_config = replace(model_config, fused_attention=not args.course_attention, bfloat16=bfloat16)
    model = GPT(model_config).to(device)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        torch.set_rng_state(checkpoint["rng_state"])
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m solutions.gpt " + " ".join(sys.argv[1:] if argv is None else argv)
    run = checkpoint["run"] if checkpoint is not None else {"commands": [command], "wall_seconds": 0.0, "samples": []}
    if checkpoint is not None:
        run["commands"].append(command)
    samples = run["samples"]
    started = time.perf_counter()

    def after_evaluation(iteration, history, optimizer):
        text = sample_text(model, vocabulary, length=args.sample_length, do_sample=True, top_k=20)
        samples.append({"iteration": iteration, "val_loss": history["val_loss"][-1], "text": text})
        tqdm.write(f"--- iteration {iteration}, validation loss {history['val_loss'][-1]:.4f} ---\n{text}")
        saved_run = {**run, "wall_seconds": run["wall_seconds"] + time.perf_counter() - started}
        torch.save({"model": model.state_dict(), "model_config": asdict(model_config),
                    "train_config": asdict(train_config), "vocabulary": vocabulary.chars, "iteration": iteration,
                    "optimizer": optimizer.state_dict(), "history": history, "rng_state": torch.get_rng_state(),
                    "run": saved_run}, out / "checkpoint.pt")
        model.train()

    if checkpoint is None:
        warm_up(model, train_data, train_config)
    resume = None if checkpoint is None else {key: checkpoint[key] for key in ("iteration", "history", "optimizer")}
    history = train(model, train_data, val_data, train_config, after_evaluation, resume)
    seconds_per_iteration = history["train_seconds"] / train_config.max_iters
    first_interval, steady = interval_timings(history["iteration"], history["train_seconds_at_evaluation"])
    metrics = {
        "command": run["commands"][0],
        "resumed_with": run["commands"][1:],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_config": asdict(model_config),
        "train_config": asdict(train_config),
        "final_train_loss": history["train_loss"][-1],
        "final_val_loss": history["val_loss"][-1],
        "wall_seconds": run["wall_seconds"] + time.perf_counter() - started,
        "attention": "fused" if model_config.fused_attention else "course",
        "precision": "bfloat16" if model_config.bfloat16 else "float32",
        "seconds_per_iteration": seconds_per_iteration,
        "first_interval_seconds_per_iteration": first_interval,
        "steady_seconds_per_iteration": steady,
        "tokens_per_second": train_config.batch_size * model_config.block_size / (steady or seconds_per_iteration),
        "val_loss_whole_split": whole_split_loss(model, val_data),
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    (out / "samples_during_training.txt").write_text(
        "".join(f"--- iteration {s['iteration']}, validation loss {s['val_loss']:.4f} ---\n{s['text']}\n"
                for s in samples), encoding="utf-8")
    # The trained model at the temperatures of the notebook's sampling cell, printed as that cell prints them.
    final_samples = {temperature: sample_text(model, vocabulary, length=args.sample_length, temperature=temperature,
                                              do_sample=True, top_k=20) for temperature in (0.5, 1.0, 1.5)}
    (out / "samples.txt").write_text("".join(f"--- temperature {temperature}, top_k 20 ---\n{text}\n"
                                             for temperature, text in final_samples.items()), encoding="utf-8")
    plot_losses(history).savefig(out / "losses.png", dpi=100)
    steady_text = "" if steady is None else f"{steady:.4f} s per iteration later (median), "
    print(f"validation loss {metrics['final_val_loss']:.4f}; {first_interval:.4f} s per iteration over the first "
          f"{history['iteration'][0]} iterations, {steady_text}{metrics['tokens_per_second']:.0f} tokens/s, "
          f"{metrics['wall_seconds']:.0f} s in all; wrote {out}/")


if __name__ == "__main__":
    main()
