# CUDA discovery for gptcore.
#   GPTCORE_CUDA=AUTO: the CUDA kernels when nvcc and cuBLAS/cuBLASLt are there (NCCL optional),
#                      else the CPU kernels, with one message saying what was missing and the fix;
#                ON:   the CUDA kernels or a configure error; OFF: the CPU kernels.
#   -> GPTCORE_WITH_CUDA, GPTCORE_CUDA_ARCHS, GPTCORE_CUDA_LIB_DIRS (for rpaths),
#      GPTCORE_BUILD_NOTE: why CUDA is off, or what a CUDA build lacks ("" when nothing);
#      compiled into the library and shown by `gptcore info`
#   architectures: -DCMAKE_CUDA_ARCHITECTURES, else $GPTCORE_CUDA_ARCHS, else "80;90"
#   cuBLAS / NCCL: the CUDA toolkit first, then the nvidia-cublas / nvidia-nccl-cu13 wheels
#   in the Python environment; imported as gptcore::cublas and gptcore::nccl.
# The whole decision is made before enable_language(CUDA), so a CPU build never enables CUDA.
set(GPTCORE_WITH_CUDA OFF)
set(GPTCORE_CUDA_ARCHS "")
set(GPTCORE_CUDA_LIB_DIRS "")
set(GPTCORE_BUILD_NOTE "")

# Called for what the CUDA build lacks (`where`: where it was looked for): ON stops the configure;
# AUTO builds the CPU kernels and says so once.
macro(gptcore_cuda_unavailable reason fix where)
  if(_gc_cuda STREQUAL "ON")
    message(FATAL_ERROR "GPTCORE_CUDA=ON but ${reason} (${where}): ${fix}, or configure with -DGPTCORE_CUDA=OFF")
  endif()
  set(GPTCORE_BUILD_NOTE "${reason} (${fix}, then reinstall)")
  message(NOTICE "gptcore: building the CPU kernels only: ${reason} (${where}).\n"
                 "  For the CUDA build: ${fix}, then reinstall gptcore. GPTCORE_CUDA=OFF skips this check.")
  return()
endmacro()

string(TOUPPER "${GPTCORE_CUDA}" _gc_cuda)
if(NOT _gc_cuda MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "GPTCORE_CUDA must be AUTO, ON or OFF, not '${GPTCORE_CUDA}'")
elseif(_gc_cuda STREQUAL "OFF")
  set(GPTCORE_BUILD_NOTE "GPTCORE_CUDA=OFF")
  return()
endif()

include(CheckLanguage)
if(DEFINED CACHE{CMAKE_CUDA_COMPILER} AND NOT CMAKE_CUDA_COMPILER)
  unset(CMAKE_CUDA_COMPILER CACHE)  # a past "not found" is looked for again: nvcc may be there now
endif()
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  gptcore_cuda_unavailable("nvcc not found" "install the CUDA toolkit and put nvcc on PATH or set CUDACXX"
    "looked on PATH and in CUDACXX")
endif()
find_package(CUDAToolkit)
if(NOT CUDAToolkit_FOUND)
  gptcore_cuda_unavailable("no CUDA toolkit found" "set CUDAToolkit_ROOT" "for ${CMAKE_CUDA_COMPILER}")
endif()

set(_gc_wheel_roots "")
foreach(_dir IN LISTS GPTCORE_PYTHON_SITE_DIRS)
  list(APPEND _gc_wheel_roots "${_dir}/nvidia/cu13" "${_dir}/nvidia/cublas" "${_dir}/nvidia/nccl")
endforeach()

# A library from the toolkit or a wheel, as an imported target with its include dir. Searched
# afresh at every configure: a build folder reused from another Python environment must not keep
# that environment's libraries (or its "not found").
function(gptcore_find_cuda_library target header)
  cmake_parse_arguments(ARG "" "" "NAMES" ${ARGN})
  unset(${target}_INCLUDE_DIR CACHE)
  unset(${target}_LIBRARY CACHE)
  find_path(${target}_INCLUDE_DIR ${header} HINTS ${CUDAToolkit_INCLUDE_DIRS} ${_gc_wheel_roots} PATH_SUFFIXES include NO_DEFAULT_PATH)
  find_library(${target}_LIBRARY NAMES ${ARG_NAMES} HINTS ${CUDAToolkit_LIBRARY_DIR} ${_gc_wheel_roots} PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
  if(${target}_INCLUDE_DIR AND ${target}_LIBRARY)
    get_filename_component(_libdir "${${target}_LIBRARY}" DIRECTORY)
    message(STATUS "gptcore: ${target}: ${${target}_LIBRARY}")
    set(GPTCORE_CUDA_LIB_DIRS "${GPTCORE_CUDA_LIB_DIRS};${_libdir}" PARENT_SCOPE)
    set(${target}_FOUND TRUE PARENT_SCOPE)
  endif()
endfunction()

gptcore_find_cuda_library(GPTCORE_CUBLAS cublas_v2.h NAMES cublas libcublas.so.13)
gptcore_find_cuda_library(GPTCORE_CUBLASLT cublasLt.h NAMES cublasLt libcublasLt.so.13)
if(NOT GPTCORE_CUBLAS_FOUND OR NOT GPTCORE_CUBLASLT_FOUND)
  gptcore_cuda_unavailable("cuBLAS not found at build time" "pip install nvidia-cublas"
    "looked in the CUDA toolkit, ${CUDAToolkit_LIBRARY_DIR}, and the Python environment of ${Python_EXECUTABLE}")
endif()

if(GPTCORE_NCCL)
  gptcore_find_cuda_library(GPTCORE_NCCL nccl.h NAMES nccl libnccl.so.2)
  if(NOT GPTCORE_NCCL_FOUND)
    set(GPTCORE_BUILD_NOTE "NCCL not found: communicator single-process only (pip install nvidia-nccl-cu13, then reinstall)")
    message(NOTICE "gptcore: NCCL not found, so the communicator is single-process only: "
                   "`pip install nvidia-nccl-cu13`, then reinstall, for multi-GPU communication.")
  endif()
else()
  set(GPTCORE_BUILD_NOTE "GPTCORE_NCCL=OFF: communicator single-process only")
endif()

if(NOT CMAKE_CUDA_ARCHITECTURES)
  if(DEFINED ENV{GPTCORE_CUDA_ARCHS} AND NOT "$ENV{GPTCORE_CUDA_ARCHS}" STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES "$ENV{GPTCORE_CUDA_ARCHS}")
  else()
    set(CMAKE_CUDA_ARCHITECTURES "80;90")
  endif()
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(GPTCORE_WITH_CUDA ON)
set(GPTCORE_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}")

add_library(gptcore::cublas INTERFACE IMPORTED)
target_include_directories(gptcore::cublas INTERFACE "${GPTCORE_CUBLAS_INCLUDE_DIR}" "${GPTCORE_CUBLASLT_INCLUDE_DIR}")
target_link_libraries(gptcore::cublas INTERFACE "${GPTCORE_CUBLAS_LIBRARY}" "${GPTCORE_CUBLASLT_LIBRARY}")
if(GPTCORE_NCCL_FOUND)
  add_library(gptcore::nccl INTERFACE IMPORTED)
  target_include_directories(gptcore::nccl INTERFACE "${GPTCORE_NCCL_INCLUDE_DIR}")
  target_link_libraries(gptcore::nccl INTERFACE "${GPTCORE_NCCL_LIBRARY}")
endif()
list(REMOVE_DUPLICATES GPTCORE_CUDA_LIB_DIRS)
list(FILTER GPTCORE_CUDA_LIB_DIRS EXCLUDE REGEX "^$")
