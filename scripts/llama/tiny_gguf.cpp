// SPDX-License-Identifier: MIT
// Writes a tiny llama-architecture GGUF with random weights, for tests that need a real
// llama-server but no real model: 2 blocks, width 64, 4 heads, feed-forward 128. The tokenizer
// is copied from a vocab-only GGUF of llama.cpp's models/ folder, so the server tokenises and
// detokenises like a real model; the answers are garbage, which is all the tests need.
//
// usage: tiny_gguf VOCAB.gguf OUT.gguf [seed]
// Built by scripts/llama-server.sh against the ggml headers and libggml-base of llama.cpp.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ggml.h"
#include "gguf.h"

namespace {

constexpr int64_t n_embd = 64, n_head = 4, n_ff = 128, n_layer = 2, n_ctx = 2048;

struct tensor_data {
  std::vector<std::uint8_t> bytes;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s VOCAB.gguf OUT.gguf [seed]\n", argv[0]);
    return 2;
  }
  const unsigned seed = argc > 3 ? static_cast<unsigned>(std::strtoul(argv[3], nullptr, 10)) : 42;

  gguf_init_params vp{/*no_alloc=*/true, /*ctx=*/nullptr};
  gguf_context* vocab = gguf_init_from_file(argv[1], vp);
  if (!vocab) {
    std::fprintf(stderr, "tiny_gguf: cannot read %s\n", argv[1]);
    return 1;
  }
  const int64_t tokens_key = gguf_find_key(vocab, "tokenizer.ggml.tokens");
  if (tokens_key < 0) {
    std::fprintf(stderr, "tiny_gguf: %s has no tokenizer.ggml.tokens\n", argv[1]);
    return 1;
  }
  const auto n_vocab = static_cast<int64_t>(gguf_get_arr_n(vocab, tokens_key));

  gguf_context* out = gguf_init_empty();
  gguf_set_kv(out, vocab);  // tokenizer.* and general.*; the hyper-parameters are set below
  gguf_set_val_str(out, "general.architecture", "llama");
  gguf_set_val_str(out, "general.name", "moa-tiny-random");
  gguf_set_val_u32(out, "general.file_type", 1);  // mostly F16
  gguf_set_val_u32(out, "llama.context_length", n_ctx);
  gguf_set_val_u32(out, "llama.embedding_length", n_embd);
  gguf_set_val_u32(out, "llama.block_count", n_layer);
  gguf_set_val_u32(out, "llama.feed_forward_length", n_ff);
  gguf_set_val_u32(out, "llama.attention.head_count", n_head);
  gguf_set_val_u32(out, "llama.attention.head_count_kv", n_head);
  gguf_set_val_u32(out, "llama.rope.dimension_count", n_embd / n_head);
  gguf_set_val_f32(out, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
  gguf_set_val_u32(out, "llama.vocab_size", static_cast<std::uint32_t>(n_vocab));

  // Tensor descriptors live in a no-alloc ggml context; their data in vectors kept until written.
  ggml_init_params cp{/*mem_size=*/ggml_tensor_overhead() * 64, /*mem_buffer=*/nullptr,
                      /*no_alloc=*/true};
  ggml_context* meta = ggml_init(cp);
  std::vector<tensor_data> data;
  data.reserve(64);
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);

  auto add = [&](const std::string& name, ggml_type type, int64_t ne0, int64_t ne1) {
    ggml_tensor* t =
        ne1 == 1 ? ggml_new_tensor_1d(meta, type, ne0) : ggml_new_tensor_2d(meta, type, ne0, ne1);
    ggml_set_name(t, name.c_str());
    gguf_add_tensor(out, t);
    auto& d = data.emplace_back();
    d.bytes.resize(ggml_nbytes(t));
    const int64_t n = ne0 * ne1;
    if (type == GGML_TYPE_F32) {
      auto* f = reinterpret_cast<float*>(d.bytes.data());
      for (int64_t i = 0; i < n; ++i) f[i] = 1.0f;  // norms: identity scale
    } else {
      auto* h = reinterpret_cast<ggml_fp16_t*>(d.bytes.data());
      for (int64_t i = 0; i < n; ++i) h[i] = ggml_fp32_to_fp16(normal(gen));
    }
    gguf_set_tensor_data(out, name.c_str(), d.bytes.data());
  };

  add("token_embd.weight", GGML_TYPE_F16, n_embd, n_vocab);
  add("output_norm.weight", GGML_TYPE_F32, n_embd, 1);
  for (int64_t l = 0; l < n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", GGML_TYPE_F32, n_embd, 1);
    add(b + "attn_q.weight", GGML_TYPE_F16, n_embd, n_embd);
    add(b + "attn_k.weight", GGML_TYPE_F16, n_embd, n_embd);
    add(b + "attn_v.weight", GGML_TYPE_F16, n_embd, n_embd);
    add(b + "attn_output.weight", GGML_TYPE_F16, n_embd, n_embd);
    add(b + "ffn_norm.weight", GGML_TYPE_F32, n_embd, 1);
    add(b + "ffn_gate.weight", GGML_TYPE_F16, n_embd, n_ff);
    add(b + "ffn_up.weight", GGML_TYPE_F16, n_embd, n_ff);
    add(b + "ffn_down.weight", GGML_TYPE_F16, n_ff, n_embd);
  }
  // No output.weight: llama.cpp then ties the output projection to token_embd.

  const bool ok = gguf_write_to_file(out, argv[2], /*only_meta=*/false);
  ggml_free(meta);
  gguf_free(out);
  gguf_free(vocab);
  if (!ok) {
    std::fprintf(stderr, "tiny_gguf: cannot write %s\n", argv[2]);
    return 1;
  }
  std::printf("tiny_gguf: wrote %s (vocab %lld)\n", argv[2], static_cast<long long>(n_vocab));
  return 0;
}
