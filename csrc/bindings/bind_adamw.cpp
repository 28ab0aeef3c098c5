#include "bindings/bindings.h"

namespace gc::bindings {

void bind_adamw(py::module_& m) {}

}  // namespace gc::bindings
