# Helpers every component uses: one library target per folder, tests registered with ctest.

set(STRATA_WARNINGS -Wall -Wextra -Wpedantic -Wno-missing-field-initializers)
if(STRATA_WERROR)
  list(APPEND STRATA_WARNINGS -Werror)
endif()

if(STRATA_SANITIZE STREQUAL "address" OR STRATA_SANITIZE STREQUAL "address,undefined")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(STRATA_SANITIZE STREQUAL "thread")
  # TSan runs the model's arithmetic 5-15x slower than -O2 alone: the tests' time limits scale.
  set(STRATA_TEST_TIMEOUT_SCALE 3)
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
  # GCC 12 warns (-Wtsan) that TSan does not model std::atomic_thread_fence, which Boost.Asio's
  # inline code uses; the warning is about the tool, not our code, and with -Werror it would stop
  # the build. Races through such fences would show as reports (and get a suppression then).
  # Only where the compiler has the warning: clang does not, and rejects -Wno-tsan under -Werror.
  include(CheckCXXCompilerFlag)
  check_cxx_compiler_flag(-Wtsan STRATA_HAVE_WTSAN)
  if(STRATA_HAVE_WTSAN)
    add_compile_options(-Wno-tsan)
  endif()
  # Debian's Abseil is not built with TSan, so absl::Mutex / CondVar / Notification (ours and
  # gRPC's) would be invisible to it and everything they guard would look racy. `make test-tsan`
  # builds Debian's Abseil instrumented (deploy/sanitizers/tsan-abseil.sh) and passes its folder
  # here. The sonames are the installed ones', so a DT_RPATH (not a RUNPATH: the loader searches
  # an executable's DT_RPATH for the libraries' own dependencies too, libgrpc's libabsl_* included)
  # makes every binary of this build, and every child it starts, load those instead of /usr/lib's.
  set(STRATA_TSAN_ABSL_LIBDIR "" CACHE PATH
      "Folder with the TSan-instrumented libabsl_*.so (deploy/sanitizers/tsan-abseil.sh prints it)")
  if(STRATA_TSAN_ABSL_LIBDIR)
    if(NOT EXISTS "${STRATA_TSAN_ABSL_LIBDIR}/libabsl_synchronization.so")
      message(FATAL_ERROR "STRATA_TSAN_ABSL_LIBDIR=${STRATA_TSAN_ABSL_LIBDIR} has no Abseil")
    endif()
    add_link_options(-Wl,--disable-new-dtags -Wl,-rpath,${STRATA_TSAN_ABSL_LIBDIR})
  else()
    message(WARNING "TSan build with Debian's uninstrumented Abseil: expect false reports "
                    "(`make test-tsan` sets STRATA_TSAN_ABSL_LIBDIR)")
  endif()
elseif(NOT STRATA_SANITIZE STREQUAL "")
  message(FATAL_ERROR "STRATA_SANITIZE must be '', 'address' (or 'address,undefined': both mean "
                      "ASan+UBSan) or 'thread', not '${STRATA_SANITIZE}'")
endif()

# strata_add_library(NAME SOURCES ... DEPS ...): the component's library, `strata_<NAME>`,
# with the repository root as its include root (#include "engine/tokenizer.h").
function(strata_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(strata_${name} ${ARG_SOURCES})
  add_library(strata::${name} ALIAS strata_${name})
  target_include_directories(strata_${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(strata_${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${STRATA_WARNINGS}>)
  target_link_libraries(strata_${name} PUBLIC ${ARG_DEPS})
endfunction()

# strata_add_test(NAME SOURCES ... DEPS ... [LABELS ...] [ENV ...]): one GoogleTest binary,
# its tests discovered individually by ctest.
function(strata_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;DEPS;LABELS;ENV;FIXTURES" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE ${STRATA_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(STRATA_TEST_TIMEOUT_SCALE)
    math(EXPR ARG_TIMEOUT "${ARG_TIMEOUT} * ${STRATA_TEST_TIMEOUT_SCALE}")
  endif()
  set(props TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
  if(ARG_ENV)
    list(APPEND props ENVIRONMENT "${ARG_ENV}")
  endif()
  if(ARG_FIXTURES)
    list(APPEND props FIXTURES_REQUIRED "${ARG_FIXTURES}")
  endif()
  gtest_discover_tests(${name} TEST_PREFIX "${name}." DISCOVERY_TIMEOUT 60 PROPERTIES ${props})
endfunction()
include(GoogleTest)
