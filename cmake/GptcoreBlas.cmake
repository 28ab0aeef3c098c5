# The CPU BLAS for gptcore: OpenBLAS from the scipy-openblas32 wheel (32-bit indices, symbols
# prefixed scipy_), found in the Python environment like the nvidia-* wheels.
#   -> gptcore::blas (include dir + library), GPTCORE_BLAS_LIB_DIR (for rpaths)
set(_gc_blas_roots "")
foreach(_dir IN LISTS GPTCORE_PYTHON_SITE_DIRS)
  list(APPEND _gc_blas_roots "${_dir}/scipy_openblas32")
endforeach()

# Searched afresh at every configure, so a build folder reused by another environment takes this one's.
unset(GPTCORE_BLAS_INCLUDE_DIR CACHE)
unset(GPTCORE_BLAS_LIBRARY CACHE)
find_path(GPTCORE_BLAS_INCLUDE_DIR cblas.h HINTS ${_gc_blas_roots} PATH_SUFFIXES include NO_DEFAULT_PATH)
find_library(GPTCORE_BLAS_LIBRARY NAMES scipy_openblas HINTS ${_gc_blas_roots} PATH_SUFFIXES lib NO_DEFAULT_PATH)
if(NOT GPTCORE_BLAS_INCLUDE_DIR OR NOT GPTCORE_BLAS_LIBRARY)
  message(FATAL_ERROR "gptcore needs OpenBLAS from the scipy-openblas32 wheel and did not find it in the Python "
                      "environment of ${Python_EXECUTABLE}: `pip install scipy-openblas32`")
endif()
get_filename_component(GPTCORE_BLAS_LIB_DIR "${GPTCORE_BLAS_LIBRARY}" DIRECTORY)
message(STATUS "gptcore: BLAS: ${GPTCORE_BLAS_LIBRARY}")
add_library(gptcore::blas INTERFACE IMPORTED)
target_include_directories(gptcore::blas INTERFACE "${GPTCORE_BLAS_INCLUDE_DIR}")
target_link_libraries(gptcore::blas INTERFACE "${GPTCORE_BLAS_LIBRARY}")
