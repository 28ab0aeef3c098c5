/* GC_API marks a declaration of gptcore's C API as exported from libgptcore.so.
 *
 * The library is compiled with hidden visibility and linked with a version script that keeps
 * only gc_* symbols (cmake/gptcore.map), so a function is reachable from outside exactly when
 * its public declaration carries GC_API: every function declared in csrc/include/gptcore/ does,
 * written before the return type (`GC_API gc_status gc_foo(...);`). Types need nothing. */
#ifndef GPTCORE_API_H
#define GPTCORE_API_H

#if defined(__GNUC__) || defined(__clang__)
#define GC_API __attribute__((visibility("default")))
#else
#define GC_API
#endif

#endif
