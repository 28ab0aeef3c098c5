# CUDA discovery for gptcore.
#   GPTCORE_CUDA=AUTO|ON|OFF -> GPTCORE_WITH_CUDA
#   architectures: -DCMAKE_CUDA_ARCHITECTURES, else $GPTCORE_CUDA_ARCHS, else "80;90"
#   cuBLAS / NCCL: the CUDA toolkit first, then the nvidia-cublas / nvidia-nccl-cu13 wheels
#   in the Python environment; imported as gptcore::cublas and gptcore::nccl.
set(GPTCORE_WITH_CUDA OFF)
set(GPTCORE_CUDA_ARCHS "")
set(GPTCORE_CUDA_LIB_DIRS "")
if(GPTCORE_CUDA STREQUAL "OFF")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(GPTCORE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "GPTCORE_CUDA=ON but no CUDA compiler was found: put nvcc on PATH or set CUDACXX")
  endif()
  message(STATUS "gptcore: nvcc not found, building the CPU kernels only")
  return()
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
find_package(CUDAToolkit REQUIRED)
set(GPTCORE_WITH_CUDA ON)
set(GPTCORE_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}")

# Site-packages folders where the nvidia-* wheels may be installed.
set(_gc_site "")
if(Python_EXECUTABLE)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import site, sysconfig; print(';'.join([sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']] + site.getsitepackages()))"
    OUTPUT_VARIABLE _gc_site OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
set(_gc_wheel_roots "")
foreach(_dir IN LISTS _gc_site)
  list(APPEND _gc_wheel_roots "${_dir}/nvidia/cu13" "${_dir}/nvidia/cublas" "${_dir}/nvidia/nccl")
endforeach()

# A library from the toolkit or a wheel, as an imported target with its include dir.
function(gptcore_find_cuda_library target header)
  cmake_parse_arguments(ARG "" "" "NAMES" ${ARGN})
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
  message(FATAL_ERROR "CUDA is on but cuBLAS was not found in the toolkit or the Python environment: "
                      "`pip install nvidia-cublas`, or configure with -DGPTCORE_CUDA=OFF")
endif()
add_library(gptcore::cublas INTERFACE IMPORTED)
target_include_directories(gptcore::cublas INTERFACE "${GPTCORE_CUBLAS_INCLUDE_DIR}" "${GPTCORE_CUBLASLT_INCLUDE_DIR}")
target_link_libraries(gptcore::cublas INTERFACE "${GPTCORE_CUBLAS_LIBRARY}" "${GPTCORE_CUBLASLT_LIBRARY}")

if(GPTCORE_NCCL)
  gptcore_find_cuda_library(GPTCORE_NCCL nccl.h NAMES nccl libnccl.so.2)
  if(GPTCORE_NCCL_FOUND)
    add_library(gptcore::nccl INTERFACE IMPORTED)
    target_include_directories(gptcore::nccl INTERFACE "${GPTCORE_NCCL_INCLUDE_DIR}")
    target_link_libraries(gptcore::nccl INTERFACE "${GPTCORE_NCCL_LIBRARY}")
  else()
    message(WARNING "gptcore: NCCL not found (`pip install nvidia-nccl-cu13`); building without it")
  endif()
endif()
list(REMOVE_DUPLICATES GPTCORE_CUDA_LIB_DIRS)
list(FILTER GPTCORE_CUDA_LIB_DIRS EXCLUDE REGEX "^$")
