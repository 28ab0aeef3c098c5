/* Which C API a program was compiled against, and which library it runs with.
 *
 * GPTCORE_API_VERSION grows by one whenever a declaration or struct layout of the C API changes
 * in a way that breaks code compiled against the previous one. A program compiled against
 * version N can check at run time that the libgptcore.so it loaded speaks the same:
 * `if (gc_api_version() != GPTCORE_API_VERSION) ...`. */
#ifndef GPTCORE_VERSION_H
#define GPTCORE_VERSION_H

#include "gptcore/api.h"

#define GPTCORE_API_VERSION 2

#ifdef __cplusplus
extern "C" {
#endif

/* The package version of the library, e.g. "0.1.0". */
GC_API const char* gc_version(void);

/* GPTCORE_API_VERSION as the library was compiled. */
GC_API int gc_api_version(void);

#ifdef __cplusplus
}
#endif
#endif
