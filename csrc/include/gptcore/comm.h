/* Communicators: collectives and point-to-point transfers between the ranks of a group.
 *
 * Two backends behind one opaque handle:
 *   NCCL    one rank per process (or per device), CUDA tensors on the communicator's device.
 *           Every rank calls gc_comm_init_nccl with the same gc_comm_id, made once by one rank
 *           (gc_comm_unique_id) and handed to the others out of band (e.g. a torch.distributed
 *           store). Only in builds with NCCL; elsewhere these calls fail with "built without NCCL".
 *   single  world 1, rank 0, always built; CPU or CUDA tensors. Every collective reduces to a
 *           copy of send into recv (on the stream for CUDA tensors) and to nothing when they
 *           are the same memory; a send to itself is matched with a recv inside a group.
 *
 * Tensors are contiguous and of one dtype per call (float32, float16, bfloat16, float64, int32,
 * int64, uint8, int8); a collective sees them as flat arrays, so "concatenated along dim 0"
 * below is the flat concatenation of the ranks' buffers in rank order. In-place calls pass the
 * same memory as send and recv. Calls are asynchronous on `stream` (a cudaStream_t on the
 * communicator's device; ignored for CPU tensors) and, as in NCCL, every rank of the group must
 * make the same collective calls in the same order. */
#ifndef GPTCORE_COMM_H
#define GPTCORE_COMM_H

#include <stdint.h>

#include "gptcore/api.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gc_comm gc_comm;

/* Opaque bytes that identify one communicator being created (NCCL's ncclUniqueId). */
#define GC_COMM_ID_BYTES 128
typedef struct gc_comm_id {
  char internal[GC_COMM_ID_BYTES];
} gc_comm_id;

/* Fixed codes: part of the ABI. */
typedef enum gc_comm_backend_type { GC_COMM_SINGLE = 0, GC_COMM_NCCL = 1 } gc_comm_backend_type;

typedef enum gc_reduce_op {
  GC_REDUCE_SUM = 0,
  GC_REDUCE_AVG = 1, /* the sum divided by world (integer division for integer dtypes) */
  GC_REDUCE_MAX = 2,
  GC_REDUCE_MIN = 3,
  GC_REDUCE_PROD = 4
} gc_reduce_op;

/* A fresh id for gc_comm_init_nccl; made by one rank, shared with all the others. */
GC_API gc_status gc_comm_unique_id(gc_comm_id* out);

/* This process's member `rank` (0 <= rank < world) of the NCCL communicator named by `id`, on
 * CUDA device `device`. Blocks until all `world` ranks have joined. */
GC_API gc_status gc_comm_init_nccl(const gc_comm_id* id, int rank, int world, int device, gc_comm** out);

/* A communicator of one rank (world 1, rank 0). */
GC_API gc_status gc_comm_init_single(gc_comm** out);

/* Frees the communicator once its queued work is done; NULL is allowed. */
GC_API gc_status gc_comm_destroy(gc_comm* comm);

GC_API gc_status gc_comm_rank(const gc_comm* comm, int* rank);
GC_API gc_status gc_comm_world(const gc_comm* comm, int* world);
GC_API gc_status gc_comm_backend(const gc_comm* comm, gc_comm_backend_type* backend);

/* recv = op over the ranks of send, element-wise; recv has send's element count. */
GC_API gc_status gc_comm_all_reduce(gc_comm* comm, const gc_tensor* send, gc_tensor* recv, gc_reduce_op op,
                                    void* stream);

/* recv = the ranks' send buffers concatenated in rank order: numel(recv) = world * numel(send). */
GC_API gc_status gc_comm_all_gather(gc_comm* comm, const gc_tensor* send, gc_tensor* recv, void* stream);

/* recv = this rank's part of op over the ranks of send, where send is world parts of
 * numel(recv) elements in rank order: numel(send) = world * numel(recv). */
GC_API gc_status gc_comm_reduce_scatter(gc_comm* comm, const gc_tensor* send, gc_tensor* recv, gc_reduce_op op,
                                        void* stream);

/* recv = root's send on every rank; send is read on the root only (other ranks may pass NULL).
 * recv has send's element count. */
GC_API gc_status gc_comm_broadcast(gc_comm* comm, const gc_tensor* send, gc_tensor* recv, int root, void* stream);

/* Point-to-point: `tensor` to / from rank `peer`. Each send needs the peer's matching recv of
 * the same dtype and element count. Several of them (a send and a recv exchanged with one
 * peer, or any pattern of them) must sit inside one group. */
GC_API gc_status gc_comm_send(gc_comm* comm, const gc_tensor* tensor, int peer, void* stream);
GC_API gc_status gc_comm_recv(gc_comm* comm, gc_tensor* tensor, int peer, void* stream);

/* Calls between start and end are issued together at end (they may nest; the outermost end
 * issues). With NCCL the group is NCCL's, which belongs to the calling thread: calls on other
 * NCCL communicators in between are part of it too. */
GC_API gc_status gc_comm_group_start(gc_comm* comm);
GC_API gc_status gc_comm_group_end(gc_comm* comm);

#ifdef __cplusplus
}
#endif
#endif
