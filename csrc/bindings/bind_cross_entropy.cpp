#include "bindings/bindings.h"

namespace gc::bindings {

void bind_cross_entropy(py::module_& m) {}

}  // namespace gc::bindings
