/* Megatron-LM's indexed dataset (.bin/.idx), byte for byte: a writer and a memory-mapped reader.
 *
 * A dataset is a prefix: `prefix.bin` holds the raw tokens of every sequence, back to back;
 * `prefix.idx` describes them, all little-endian:
 *
 *   9 bytes  magic "MMIDIDX\0\0"
 *   uint64   version, 1
 *   uint8    dtype code (gc_indexed_dtype)
 *   uint64   S, the sequence count
 *   uint64   D, the document index count (documents + 1)
 *   int32    S sequence lengths, in tokens
 *   int64    S sequence pointers, byte offsets into .bin
 *   int64    D document indices: the first sequence of each document, from 0 up to S
 *
 * A document is the run of sequences between two consecutive document indices. Empty
 * documents (no sequences) and empty sequences (no tokens) are both allowed, as in Megatron.
 * The arrays start at byte 34, so they are not aligned: read them with memcpy (or numpy).
 *
 * The writer puts everything under temporary names beside the prefix and renames them into
 * place only on finalize, .idx last; a run that stops early leaves no .idx behind. */
#ifndef GPTCORE_INDEXED_DATASET_H
#define GPTCORE_INDEXED_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "gptcore/api.h"
#include "gptcore/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Megatron's token dtype codes, as stored in the .idx header. */
typedef enum gc_indexed_dtype {
  GC_INDEXED_UINT8 = 1,
  GC_INDEXED_INT8 = 2,
  GC_INDEXED_INT16 = 3,
  GC_INDEXED_INT32 = 4,
  GC_INDEXED_INT64 = 5,
  GC_INDEXED_FLOAT64 = 6,
  GC_INDEXED_FLOAT32 = 7,
  GC_INDEXED_UINT16 = 8
} gc_indexed_dtype;

/* Bytes per token of a dtype code; 0 for an unknown code. */
GC_API size_t gc_indexed_dtype_size(int32_t dtype);

/* ---- Writer ---- */

typedef struct gc_indexed_writer gc_indexed_writer;

/* Starts a dataset at `prefix` with tokens of `dtype`. With vocab_size > 0, every token
 * added must lie in [0, vocab_size) (integer dtypes only); 0 checks nothing. */
GC_API gc_status gc_indexed_writer_open(const char* prefix, int32_t dtype, int64_t vocab_size,
                                        gc_indexed_writer** writer);

/* Appends one sequence of `count` tokens of the writer's dtype to the open document. */
GC_API gc_status gc_indexed_writer_add_sequence(gc_indexed_writer* writer, const void* tokens,
                                                int64_t count);

/* Closes the open document (which may hold no sequences: an empty document). */
GC_API gc_status gc_indexed_writer_end_document(gc_indexed_writer* writer);

/* A whole document: `num_sequences` sequences of lengths[i] tokens, stored back to back in
 * `tokens`, then end_document. */
GC_API gc_status gc_indexed_writer_add_document(gc_indexed_writer* writer, const void* tokens,
                                                const int64_t* lengths, int64_t num_sequences);

/* Appends every document of the dataset at `other_prefix` (validated as by
 * gc_indexed_dataset_open; same dtype). The open document must be empty. */
GC_API gc_status gc_indexed_writer_merge(gc_indexed_writer* writer, const char* other_prefix);

/* Closes a non-empty open document, writes the index and moves prefix.bin then prefix.idx
 * into place (an older dataset at the prefix is replaced). Nothing can be added after. */
GC_API gc_status gc_indexed_writer_finalize(gc_indexed_writer* writer);

/* Releases the writer. Without a successful finalize this aborts: the temporary files are
 * deleted and nothing at the prefix changes. NULL is ignored. */
GC_API void gc_indexed_writer_close(gc_indexed_writer* writer);

/* ---- Reader ---- */

typedef struct gc_indexed_dataset gc_indexed_dataset;

/* Maps prefix.idx and prefix.bin and validates them: magic, version, dtype code, array sizes
 * against the .idx length, lengths >= 0, pointers consistent with lengths, the .bin length,
 * document indices from 0, non-decreasing, at most S. A failure names the file and the fault. */
GC_API gc_status gc_indexed_dataset_open(const char* prefix, gc_indexed_dataset** dataset);

/* Unmaps the files. NULL is ignored. Every pointer obtained from the dataset dies with it. */
GC_API void gc_indexed_dataset_close(gc_indexed_dataset* dataset);

typedef struct gc_indexed_dataset_info {
  int32_t dtype;                  /* gc_indexed_dtype */
  int64_t num_sequences;          /* S */
  int64_t num_document_indices;   /* D = documents + 1 */
  const void* sequence_lengths;   /* S int32, mapped, unaligned */
  const void* sequence_pointers;  /* S int64, mapped, unaligned */
  const void* document_indices;   /* D int64, mapped, unaligned */
  const void* tokens;             /* the mapped .bin (aligned to the dtype); NULL when empty */
  int64_t token_bytes;            /* length of .bin */
} gc_indexed_dataset_info;

GC_API gc_status gc_indexed_dataset_get_info(const gc_indexed_dataset* dataset,
                                             gc_indexed_dataset_info* info);

/* Sequence i (0 <= i < S): a pointer into the mapped .bin and its length in tokens. */
GC_API gc_status gc_indexed_dataset_sequence(const gc_indexed_dataset* dataset, int64_t i,
                                             const void** tokens, int64_t* length);

/* Checks that every token lies in [0, vocab_size); the first one outside fails with a message
 * naming the file, the sequence, the position and the value. Integer dtypes only. */
GC_API gc_status gc_indexed_dataset_check_vocab(const gc_indexed_dataset* dataset, int64_t vocab_size);

#ifdef __cplusplus
}
#endif
#endif
