/* The whole public C API of gptcore. Torch-free, CUDA-header-free. */
#ifndef GPTCORE_GPTCORE_H
#define GPTCORE_GPTCORE_H

#include "gptcore/adamw.h"
#include "gptcore/api.h"
#include "gptcore/attention.h"
#include "gptcore/comm.h"
#include "gptcore/cross_entropy.h"
#include "gptcore/decode.h"
#include "gptcore/gpt_samples.h"
#include "gptcore/indexed_dataset.h"
#include "gptcore/info.h"
#include "gptcore/layer_norm.h"
#include "gptcore/linear.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"
#include "gptcore/version.h"

#endif
