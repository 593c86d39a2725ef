"""FeatureView at production width: a GPT-2-small-sized random-init model
(12 layers, d_model 768, vocabulary 50,257), a 16k-feature random ReLU SAE on
the residual stream entering layer 6, a T=512 prompt.

Measures: the view's compute time (ni.features until it returns), the bytes
its first state sends (JSON + binary buffers; the bundled JS excluded), and
the top-activating-contexts pass over a corpus of random documents, in
tokens per second beside plain HF forwards over the same padded batches
(ratio = pass time / plain forward time).

    python benchmarks/bench_features.py                 # ~100k corpus tokens (minutes on a CPU)
    python benchmarks/bench_features.py --tokens 20000  # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import transformers as tf
from ipywidgets.widgets.widget import _remove_buffers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import nbinterp as ni
from nbinterp.representations.contexts import ContextIndex

VOCAB = 50257


class RandomSAE(torch.nn.Module):
    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in))
        self.b_enc = torch.nn.Parameter(torch.full((d_sae,), -0.5))
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=100_000, help="corpus tokens")
    parser.add_argument("--doc-length", type=int, default=128)
    parser.add_argument("--features", type=int, default=16384)
    args = parser.parse_args()
    torch.manual_seed(0)
    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=VOCAB)).eval()
    model = ni.load(hf, tokenizer=tokenizer)
    sae = RandomSAE(768, args.features)
    prompt = torch.randint(1, VOCAB, (512,)).tolist()
    n_docs = max(1, args.tokens // args.doc_length)
    corpus = [torch.randint(1, VOCAB, (args.doc_length,)).tolist() for _ in range(n_docs)]
    report: dict = {"threads": torch.get_num_threads(), "T": 512, "d_sae": args.features,
                    "corpus_tokens": n_docs * args.doc_length}

    start = time.perf_counter()
    view = ni.features(model, prompt, sae=sae, site=("resid_pre", 6), target="w5", foil="w9", corpus=corpus)
    report["view_compute_s"] = round(time.perf_counter() - start, 3)
    view.cancel_contexts()
    view.wait()
    state, _, buffers = _remove_buffers(view.get_state())
    state.pop("_esm", None)
    state.pop("_css", None)
    report["first_state_json_bytes"] = len(json.dumps(state))
    report["first_state_buffer_bytes"] = sum(len(bytes(b)) for b in buffers)
    report["dense_matrix_bytes_not_sent"] = 512 * args.features * 4

    index = ContextIndex(model, view.features.source, corpus)
    start = time.perf_counter()
    index.run()
    pass_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for batch in index.batches:
            ids = torch.stack([index.docs[i] for i in batch])  # equal lengths: no padding needed
            hf(input_ids=ids)
    plain_s = time.perf_counter() - start
    report.update(contexts_pass_s=round(pass_s, 2), contexts_tokens_per_s=round(index.total_tokens / pass_s),
                  plain_forward_s=round(plain_s, 2), plain_tokens_per_s=round(index.total_tokens / plain_s),
                  ratio_pass_over_plain=round(pass_s / plain_s, 3), batches=len(index.batches))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
