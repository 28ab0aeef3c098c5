// gc_gpt_sample_index* and gc_gpt_blend_index against hand-computed indices.
#include <vector>

#include "check.h"

namespace {

gc_tensor host(void* p, int32_t dtype, std::vector<int64_t> shape) {
  return gc_make_tensor(p, dtype, GC_CPU, 0, static_cast<int32_t>(shape.size()), shape.data());
}

struct Samples {
  std::vector<int32_t> sizes;
  std::vector<int64_t> out;
  gc_gpt_sample_index_params p{};
  Samples(std::vector<int32_t> sizes_, void* doc, int32_t doc_dtype, int64_t length, int64_t seq_len)
      : sizes(std::move(sizes_)) {
    p.sizes = host(sizes.data(), GC_INT32, {static_cast<int64_t>(sizes.size())});
    p.doc_index = host(doc, doc_dtype, {length});
    p.seq_len = seq_len;
  }
  gc_status run(int64_t num_samples) {
    out.assign(2 * (num_samples + 1), -1);
    p.sample_index = host(out.data(), GC_INT64, {num_samples + 1, 2});
    return gc_gpt_sample_index(&p);
  }
};

}  // namespace

TEST(sample_index_hand_computed) {
  // Reading order: documents 2, 0, 3, 1 of lengths 2, 3, 4, 5 = stream tokens 0-1 | 2-4 | 5-8 | 9-13.
  // seq_len 4: samples start at stream tokens 0, 4, 8, 12; (14 - 1) / 4 = 3 samples fit.
  std::vector<int32_t> doc = {2, 0, 3, 1};
  Samples s({3, 5, 2, 4}, doc.data(), GC_INT32, 4, 4);
  int64_t held = 0;
  CHECK(gc_gpt_sample_index_count(&s.p, &held) == GC_OK && held == 3);
  CHECK(s.run(3) == GC_OK);
  CHECK((s.out == std::vector<int64_t>{0, 0, 1, 2, 2, 3, 3, 3}));
  CHECK(s.run(1) == GC_OK);  // a prefix
  CHECK((s.out == std::vector<int64_t>{0, 0, 1, 2}));
}

TEST(sample_index_skips_empty_documents_and_takes_int64) {
  // The same stream with an empty document 4 read first and in the middle.
  std::vector<int64_t> doc = {4, 2, 0, 4, 3, 1};
  Samples s({3, 5, 2, 4, 0}, doc.data(), GC_INT64, 6, 4);
  CHECK(s.run(3) == GC_OK);
  CHECK((s.out == std::vector<int64_t>{0, 0, 2, 2, 4, 3, 5, 3}));
  s.p.seq_len = 2;  // samples 1 and 2 start at stream tokens 2 and 4: the first and last of document 0
  CHECK(s.run(2) == GC_OK);
  CHECK((s.out == std::vector<int64_t>{0, 0, 2, 0, 2, 2}));
}

TEST(sample_index_bad_input_says_why) {
  std::vector<int32_t> doc = {0, 1};
  Samples s({3, 2}, doc.data(), GC_INT32, 2, 4);  // 5 tokens: exactly one sample
  CHECK(s.run(1) == GC_OK);
  CHECK_FAILS(s.run(2), GC_ERROR_SHAPE, "rows for 2 samples but the documents hold 1");
  s.p.seq_len = 5;
  int64_t held = 0;
  CHECK_FAILS(gc_gpt_sample_index_count(&s.p, &held), GC_ERROR_INVALID_ARGUMENT,
              "hold 5 tokens but one sample needs seq_len + 1 = 6");
  s.p.seq_len = 0;
  CHECK_FAILS(s.run(1), GC_ERROR_INVALID_ARGUMENT, "seq_len must be >= 1");
  s.p.seq_len = 1;
  doc[1] = 7;
  CHECK_FAILS(s.run(1), GC_ERROR_INVALID_ARGUMENT, "doc_index[1] = 7 is not a document id");
  doc[1] = 1;
  s.p.doc_index.shape[0] = 0;
  CHECK_FAILS(s.run(1), GC_ERROR_INVALID_ARGUMENT, "'doc_index' is empty");
  s.p.doc_index.shape[0] = 2;
  s.p.doc_index.dtype = GC_FLOAT32;
  CHECK_FAILS(s.run(1), GC_ERROR_DTYPE, "'doc_index' has dtype float32");
}

TEST(blend_index_hand_computed) {
  // Shares 1/4 and 3/4: each step takes the dataset furthest behind share * max(i, 1); a tie
  // (i = 4: 1 - 1 = 3 - 3) goes to the lower index.
  std::vector<double> w = {1, 3};
  std::vector<uint8_t> which(8);
  std::vector<int64_t> sample(8);
  gc_gpt_blend_index_params p{host(w.data(), GC_FLOAT64, {2}), host(which.data(), GC_UINT8, {8}),
                              host(sample.data(), GC_INT64, {8})};
  CHECK(gc_gpt_blend_index(&p) == GC_OK);
  CHECK((which == std::vector<uint8_t>{1, 0, 1, 1, 0, 1, 1, 1}));
  CHECK((sample == std::vector<int64_t>{0, 0, 1, 2, 1, 3, 4, 5}));

  std::vector<uint16_t> wide(8);
  p.dataset_index = host(wide.data(), GC_UINT16, {8});
  w = {0, 2};  // a dataset of weight 0 is never picked, even on a tie
  CHECK(gc_gpt_blend_index(&p) == GC_OK);
  CHECK((wide == std::vector<uint16_t>(8, 1)));
  CHECK((sample == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(blend_index_bad_input_says_why) {
  std::vector<double> w = {1, -1};
  std::vector<uint8_t> which(4);
  std::vector<int64_t> sample(4);
  gc_gpt_blend_index_params p{host(w.data(), GC_FLOAT64, {2}), host(which.data(), GC_UINT8, {4}),
                              host(sample.data(), GC_INT64, {4})};
  CHECK_FAILS(gc_gpt_blend_index(&p), GC_ERROR_INVALID_ARGUMENT, "weights[1] = -1");
  w = {0, 0};
  CHECK_FAILS(gc_gpt_blend_index(&p), GC_ERROR_INVALID_ARGUMENT, "the weights sum to 0");
  w = {1, 1};
  p.dataset_sample_index.shape[0] = 3;
  CHECK_FAILS(gc_gpt_blend_index(&p), GC_ERROR_SHAPE, "'dataset_sample_index'");
  p.dataset_sample_index.shape[0] = 4;
  p.dataset_index.dtype = GC_INT32;
  CHECK_FAILS(gc_gpt_blend_index(&p), GC_ERROR_DTYPE, "'dataset_index' has dtype int32");
  CHECK_FAILS(gc_gpt_blend_index(nullptr), GC_ERROR_INVALID_ARGUMENT, "params is NULL");
}

TEST_MAIN()
