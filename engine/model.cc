#include "engine/model.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/model_ops.h"

namespace strata::engine {

// The step's activations, carved from one backend allocation that grows to the largest step.
struct Model::Scratch {
  DeviceBuffer memory;
  int64_t rows = 0, seqs = 0, table_entries = 0, logit_rows = 0;  // what it is sized for

  // Step description (uploaded from the host each step).
  int32_t* tokens = nullptr;          // [T]
  int64_t* positions = nullptr;       // [T]
  int32_t* seq_of_row = nullptr;      // [T]
  StepSequence* seq_table = nullptr;  // [S]
  int32_t* block_table = nullptr;     // [Σ blocks]
  int32_t* logit_rows_idx = nullptr;  // [R]
  // Residual streams and sublayer activations.
  float* streams = nullptr;  // [T, hc, d]
  float* mix = nullptr;      // [T, (2+hc)·hc]
  float* x_in = nullptr;     // [T, d]
  float* y = nullptr;        // [T, d]
  AttentionScratch attn;
  // MoE
  float* gate = nullptr;     // [T, E]
  int32_t* ids = nullptr;    // [T, k]
  float* weights = nullptr;  // [T, k]
  float* u = nullptr;        // [T, inter] shared expert
  float* v = nullptr;        // [T, inter]
  float* shared = nullptr;   // [T, d]
  // Logits
  float* picked = nullptr;  // [R, hc, d]
  float* h = nullptr;       // [R, d]
  float* logits = nullptr;  // [R, V]

  // Assigns every pointer from `base` (null: only sizes); returns the bytes needed.
  int64_t Carve(const ModelConfig& c, const KvLayout& kv, uint8_t* base) {
    int64_t at = 0;
    auto take = [&](auto*& ptr, int64_t count) {
      using T = std::remove_reference_t<decltype(*ptr)>;
      ptr = base == nullptr ? nullptr : reinterpret_cast<T*>(base + at);
      at += (std::max<int64_t>(count, 1) * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
    };
    const int64_t T = rows, R = logit_rows, d = c.hidden_size, hc = c.hc_mult;
    const int64_t H = c.num_attention_heads, hd = c.head_dim, ic = c.index_head_dim,
                  ih = c.index_n_heads;
    take(tokens, T);
    take(positions, T);
    take(seq_of_row, T);
    take(seq_table, seqs);
    take(block_table, table_entries);
    take(logit_rows_idx, R);
    take(streams, T * hc * d);
    take(mix, T * (2 + hc) * hc);
    take(x_in, T * d);
    take(y, T * d);
    take(attn.qr, T * c.q_lora_rank);
    take(attn.q, T * H * hd);
    take(attn.kv, T * hd);
    take(attn.kv_bytes, T * kv.main_entry_bytes());
    take(attn.ca, T * 2 * hd);
    take(attn.cz, T * 2 * hd);
    take(attn.ia, T * 2 * ic);
    take(attn.iz, T * 2 * ic);
    take(attn.qi, T * ih * ic);
    take(attn.wi, T * ih);
    take(attn.chosen, T * c.index_topk);
    take(attn.count, T);
    take(attn.o, T * H * hd);
    take(attn.r, T * c.o_groups * c.o_lora_rank);
    take(gate, T * c.n_routed_experts);
    take(ids, T * c.num_experts_per_tok);
    take(weights, T * c.num_experts_per_tok);
    take(u, T * c.moe_intermediate_size);
    take(v, T * c.moe_intermediate_size);
    take(shared, T * d);
    take(picked, R * hc * d);
    take(h, R * d);
    take(logits, R * c.vocab_size);
    return at;
  }
};

Model::Model(const ModelWeights& weights, Backend& backend, ExpertExecutor& experts, KvPool& pool)
    : weights_(weights),
      backend_(backend),
      experts_(experts),
      pool_(pool),
      scratch_(std::make_unique<Scratch>()) {
  const ModelConfig& c = weights.config();
  // The two RoPE tables (window-only layers; compressed layers with YaRN), in backend memory.
  std::vector<float> window = RopeFrequencies(c, /*compressed_layer=*/false);
  std::vector<float> compressed = RopeFrequencies(c, /*compressed_layer=*/true);
  std::vector<float> both = window;
  both.insert(both.end(), compressed.begin(), compressed.end());
  absl::StatusOr<DeviceBuffer> freqs =
      DeviceBuffer::Allocate(backend, static_cast<int64_t>(both.size()) * 4);
  if (!freqs.ok()) {  // a few hundred bytes: a backend that cannot hold them cannot run anything
    std::fprintf(stderr, "Model: %s\n", std::string(freqs.status().message()).c_str());
    std::abort();
  }
  rope_freqs_ = std::move(*freqs);
  backend.ToDevice(rope_freqs_.get(), both.data(), static_cast<int64_t>(both.size()) * 4);
  const RopeTable rope_window{rope_freqs_.as<float>(), c.qk_rope_head_dim};
  const RopeTable rope_compressed{rope_freqs_.as<float>() + window.size(), c.qk_rope_head_dim};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    attention_.push_back(
        std::make_unique<AttentionLayer>(c, weights.layer(i), i, pool.layout(),
                                         c.ratio(i) > 0 ? rope_compressed : rope_window, backend));
  }
}

Model::~Model() = default;

SequenceCache Model::NewSequence() const {
  SequenceCache cache;
  const int64_t bytes = pool_.layout().state_bytes();
  if (backend_.host_memory()) {
    cache.state.assign(static_cast<size_t>(bytes), 0);
  } else {
    // Backend memory; if that fails the cache has no state slot and Step() says so.
    absl::StatusOr<DeviceBuffer> state = DeviceBuffer::Allocate(backend_, bytes);
    if (state.ok()) {
      cache.device_state = std::move(*state);
      backend_.Zero(cache.device_state.get(), bytes);
    }
  }
  return cache;
}

absl::StatusOr<SequenceCache> Model::ResumeSequence(std::vector<int32_t> blocks,
                                                   absl::Span<const uint8_t> checkpoint) {
  const KvLayout& kv = pool_.layout();
  SequenceCache cache = NewSequence();
  cache.blocks = std::move(blocks);
  const int64_t position = static_cast<int64_t>(cache.blocks.size()) * kBlockTokens;
  absl::Status ok = VerifyKvRecord(checkpoint.data(), static_cast<int64_t>(checkpoint.size()),
                                   KvRecordKind::kState, kv.fingerprint());
  if (ok.ok() && reinterpret_cast<const KvRecordHeader*>(checkpoint.data())->tokens !=
                     static_cast<uint64_t>(position)) {
    ok = absl::DataLossError(absl::StrCat(
        "the checkpoint is at position ",
        reinterpret_cast<const KvRecordHeader*>(checkpoint.data())->tokens, ", its blocks end at ",
        position));
  }
  if (ok.ok() && cache.state_data() == nullptr) {
    ok = absl::ResourceExhaustedError("no state slot (the backend is out of memory)");
  }
  if (!ok.ok()) {
    Release(cache);
    return Annotate(ok, "resuming a cached prefix");
  }
  if (backend_.host_memory()) {
    std::memcpy(cache.state.data(), checkpoint.data(), checkpoint.size());
  } else {
    backend_.ToDevice(cache.device_state.get(), checkpoint.data(),
                      static_cast<int64_t>(checkpoint.size()));
  }
  cache.position = position;
  return cache;
}

std::vector<uint8_t> Model::SnapshotState(SequenceCache& cache) const {
  std::vector<uint8_t> out(static_cast<size_t>(pool_.layout().state_bytes()));
  if (backend_.host_memory()) {
    std::memcpy(out.data(), cache.state.data(), out.size());
  } else {
    backend_.ToHost(out.data(), cache.device_state.get(), static_cast<int64_t>(out.size()));
  }
  return out;
}

void Model::Release(SequenceCache& cache) {
  for (int32_t id : cache.blocks) pool_.Free(id);
  cache.blocks.clear();
}

absl::Status Model::Reserve(int64_t rows, int64_t seqs, int64_t table_entries, int64_t logit_rows) {
  Scratch& s = *scratch_;
  if (rows <= s.rows && seqs <= s.seqs && table_entries <= s.table_entries &&
      logit_rows <= s.logit_rows) {
    return absl::OkStatus();
  }
  s.rows = std::max(rows, s.rows);
  s.seqs = std::max(seqs, s.seqs);
  s.table_entries = std::max(table_entries, s.table_entries);
  s.logit_rows = std::max(logit_rows, s.logit_rows);
  s.memory.Reset();
  const int64_t bytes = s.Carve(config(), pool_.layout(), nullptr);
  absl::StatusOr<DeviceBuffer> memory = DeviceBuffer::Allocate(backend_, bytes);
  if (!memory.ok()) {
    s.rows = s.seqs = s.table_entries = s.logit_rows = 0;
    return Annotate(memory.status(), absl::StrCat("step scratch for ", rows, " rows"));
  }
  s.memory = std::move(*memory);
  s.Carve(config(), pool_.layout(), s.memory.as<uint8_t>());
  return absl::OkStatus();
}

absl::Status Model::Ffn(int64_t layer, int64_t rows) {
  const ModelConfig& c = config();
  const LayerWeights& l = weights_.layer(layer);
  Scratch& s = *scratch_;
  const int64_t k = c.num_experts_per_tok;
  backend_.Linear(l.gate, s.x_in, rows, s.gate);
  backend_.RouteExperts(RouterParams{c.n_routed_experts, k, l.gate_bias, l.tid2eid,
                                     static_cast<float>(c.routed_scaling_factor)},
                        s.gate, s.tokens, rows, s.ids, s.weights);
  STRATA_RETURN_IF_ERROR(experts_.Run(layer, s.x_in, rows, s.ids, s.weights, k, s.y));
  // The shared expert: the same SwiGLU, FP8 weights, no routing weight.
  const float limit = static_cast<float>(c.swiglu_limit);
  backend_.Linear(l.shared.w1, s.x_in, rows, s.u);
  backend_.Linear(l.shared.w3, s.x_in, rows, s.v);
  backend_.SwiGlu(s.u, s.v, rows, l.shared.w1.rows, nullptr, limit, s.u);
  backend_.Linear(l.shared.w2, s.u, rows, s.shared);
  backend_.RoundBf16(s.shared, rows * c.hidden_size);
  backend_.AddBf16(s.y, s.shared, rows * c.hidden_size, s.y);
  return absl::OkStatus();
}

void Model::Logits(const std::vector<int32_t>& rows, std::vector<float>* logits) {
  const ModelConfig& c = config();
  Scratch& s = *scratch_;
  const int64_t r = static_cast<int64_t>(rows.size()), n = c.hc_mult, d = c.hidden_size,
                V = c.vocab_size;
  backend_.ToDevice(s.logit_rows_idx, rows.data(), r * 4);
  backend_.GatherRows(s.streams, n * d, s.logit_rows_idx, r, s.picked);
  const HcWeights& hc = weights_.hc_head();
  backend_.HcHead(HcParams{hc.fn, hc.base, hc.scale, n, d, hc.rows, 0, static_cast<float>(c.hc_eps),
                           static_cast<float>(c.rms_norm_eps)},
                  s.picked, r, s.h);
  backend_.RmsNorm(s.h, weights_.final_norm(), r, d, static_cast<float>(c.rms_norm_eps), s.h);
  backend_.Linear(weights_.head(), s.h, r, s.logits);
  const size_t at = logits->size();
  logits->resize(at + static_cast<size_t>(r * V));
  backend_.ToHost(logits->data() + at, s.logits, r * V * 4);
}

absl::Status Model::Step(absl::Span<const StepInput> inputs, std::vector<float>* logits,
                         const LayerObserver& observer) {
  const ModelConfig& c = config();
  const int64_t n = c.hc_mult, d = c.hidden_size;
  if (!backend_.host_memory() && pool_.host_memory()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the KV pool is in host memory, which the ", backend_.name(),
                     " backend cannot use: build it with KvPool(layout, blocks, &backend)"));
  }
  // Validate and plan before touching any cache.
  std::vector<StepSequence> seqs;
  std::vector<int64_t> positions;
  std::vector<int32_t> seq_of_row, tokens, logit_rows;
  int64_t blocks_needed = 0, table_entries = 0;
  for (size_t s = 0; s < inputs.size(); ++s) {
    const StepInput& in = inputs[s];
    const int64_t count = static_cast<int64_t>(in.tokens.size());
    if (count == 0)
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " has no new tokens"));
    if (in.cache->state_data() == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("sequence ", s, " has no state slot (the backend was out of memory)"));
    }
    const int64_t end = in.cache->position + count;
    if (end > c.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat("sequence ", s, " would reach position ", end,
                                                ", past the model's limit of ",
                                                c.max_position_embeddings));
    }
    for (int32_t id : in.tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", id, " is outside the vocabulary (0..", c.vocab_size - 1, ")"));
      }
    }
    const int64_t blocks = pool_.layout().BlocksFor(end);
    blocks_needed += std::max<int64_t>(0, blocks - static_cast<int64_t>(in.cache->blocks.size()));
    // The whole block list goes into the table, also blocks reserved past this step (a prefill
    // worker takes a prompt's blocks up front): counting only those the step reaches overran
    // the table into the next sequence's.
    table_entries += std::max(blocks, static_cast<int64_t>(in.cache->blocks.size()));
    seqs.push_back(StepSequence{in.cache->position, count, static_cast<int64_t>(positions.size()),
                                in.cache->state_data(), nullptr});
    for (int64_t i = 0; i < count; ++i) {
      positions.push_back(in.cache->position + i);
      seq_of_row.push_back(static_cast<int32_t>(s));
      tokens.push_back(in.tokens[static_cast<size_t>(i)]);
    }
    if (in.want_logits) logit_rows.push_back(static_cast<int32_t>(positions.size()) - 1);
  }
  if (blocks_needed > pool_.free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV pool has ", pool_.free_blocks(), " free blocks, the step needs ", blocks_needed));
  }
  const int64_t T = static_cast<int64_t>(positions.size());
  STRATA_RETURN_IF_ERROR(Reserve(T, static_cast<int64_t>(seqs.size()), table_entries,
                                 static_cast<int64_t>(logit_rows.size())));
  for (const StepInput& in : inputs) {
    while (static_cast<int64_t>(in.cache->blocks.size()) <
           pool_.layout().BlocksFor(in.cache->position + static_cast<int64_t>(in.tokens.size()))) {
      STRATA_ASSIGN_OR_RETURN(int32_t id, pool_.Allocate());
      in.cache->blocks.push_back(id);
    }
  }

  // The step's description, in backend memory.
  Scratch& s = *scratch_;
  std::vector<int32_t> table;
  for (size_t i = 0; i < inputs.size(); ++i) {
    seqs[i].blocks = s.block_table + table.size();
    table.insert(table.end(), inputs[i].cache->blocks.begin(), inputs[i].cache->blocks.end());
  }
  backend_.ToDevice(s.tokens, tokens.data(), T * 4);
  backend_.ToDevice(s.positions, positions.data(), T * 8);
  backend_.ToDevice(s.seq_of_row, seq_of_row.data(), T * 4);
  backend_.ToDevice(s.block_table, table.data(), static_cast<int64_t>(table.size()) * 4);
  backend_.ToDevice(s.seq_table, seqs.data(),
                    static_cast<int64_t>(seqs.size() * sizeof(StepSequence)));
  const StepBatch step{T, s.positions, s.seq_of_row, s.seq_table, seqs, positions};
  const KvPoolView pool{pool_.memory(), pool_.layout().block_bytes()};
  const float eps = static_cast<float>(c.rms_norm_eps);
  auto hc_params = [&](const HcWeights& hc) {
    return HcParams{
        hc.fn, hc.base, hc.scale, n, d, hc.rows, c.hc_sinkhorn_iters, static_cast<float>(c.hc_eps),
        eps};
  };

  backend_.Embed(weights_.embed(), d, s.tokens, T, n, s.streams);
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    if (observer) observer(layer, s.streams, T);
    const LayerWeights& l = weights_.layer(layer);
    const HcParams attn_hc = hc_params(l.hc_attn), ffn_hc = hc_params(l.hc_ffn);
    backend_.HcPre(attn_hc, s.streams, T, s.mix, s.x_in);
    backend_.RmsNorm(s.x_in, l.attn_norm, T, d, eps, s.x_in);
    attention_[static_cast<size_t>(layer)]->Forward(step, s.x_in, pool, s.attn, s.y);
    backend_.HcPost(attn_hc, s.mix, s.y, T, s.streams);

    backend_.HcPre(ffn_hc, s.streams, T, s.mix, s.x_in);
    backend_.RmsNorm(s.x_in, l.ffn_norm, T, d, eps, s.x_in);
    STRATA_RETURN_IF_ERROR(Ffn(layer, T));
    backend_.HcPost(ffn_hc, s.mix, s.y, T, s.streams);
  }
  if (observer) observer(c.num_hidden_layers, s.streams, T);

  // Seal the blocks this step wrote and the state slots: their bytes are now valid records.
  const KvLayout& kv = pool_.layout();
  std::vector<KvRecordSeal> seals;
  for (size_t i = 0; i < inputs.size(); ++i) {
    SequenceCache& cache = *inputs[i].cache;
    const int64_t start = cache.position, count = static_cast<int64_t>(inputs[i].tokens.size());
    cache.position += count;
    for (int64_t b = start / kBlockTokens; b <= (start + count - 1) / kBlockTokens; ++b) {
      const int64_t filled = std::min<int64_t>(kBlockTokens, cache.position - b * kBlockTokens);
      seals.push_back(KvRecordSeal{pool_.block(cache.blocks[static_cast<size_t>(b)]),
                                   kv.block_bytes(), static_cast<uint16_t>(KvRecordKind::kBlock),
                                   kv.fingerprint(), static_cast<uint64_t>(filled)});
    }
    seals.push_back(KvRecordSeal{cache.state_data(), kv.state_bytes(),
                                 static_cast<uint16_t>(KvRecordKind::kState), kv.fingerprint(),
                                 static_cast<uint64_t>(cache.position)});
  }
  backend_.SealRecords(seals);
  if (!logit_rows.empty()) Logits(logit_rows, logits);
  return absl::OkStatus();
}

}  // namespace strata::engine
