#include "gptcore/version.h"

extern "C" const char* gc_version(void) { return GPTCORE_VERSION; }

extern "C" int gc_api_version(void) { return GPTCORE_API_VERSION; }
