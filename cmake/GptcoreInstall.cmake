# What an embedder links and includes: libgptcore.so, the public headers and a CMake package config,
# installed under <prefix>/{lib,include,lib/cmake/gptcore}. The layout is the same whether <prefix> is a
# CMake install prefix or, in a wheel, site-packages/gptcore (_gc_prefix "gptcore/"), so one
# gptcoreConfig.cmake serves both: find_package(gptcore CONFIG) -> gptcore::gptcore.
include(CMakePackageConfigHelpers)

install(TARGETS gptcore LIBRARY DESTINATION ${_gc_prefix}lib)
install(DIRECTORY csrc/include/gptcore DESTINATION ${_gc_prefix}include)

set(GPTCORE_CONFIG_WITH_CUDA ${GPTCORE_WITH_CUDA})
configure_file(cmake/gptcoreConfig.cmake.in gptcoreConfig.cmake @ONLY)
# 0.x: a minor release may change the C API (GPTCORE_API_VERSION says when it does).
write_basic_package_version_file(gptcoreConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/gptcoreConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/gptcoreConfigVersion.cmake
  DESTINATION ${_gc_prefix}lib/cmake/gptcore)
