// Instruction-set copies of the CPU kernels and the runtime choice among them.
//
// A wheel must run on any x86-64, so nothing is compiled for the build machine by default.
// CMakeLists.txt compiles each kernel source (ntxent.cpp, augment.cpp) once per instruction set,
// with FASTCLR_ISA_NS naming the namespace that copy's code lives in:
//
//   fastclr::baseline  the compiler's default target (x86-64: SSE2), runs everywhere
//   fastclr::avx2      -mavx2 -mfma                                    (x86-64 only)
//   fastclr::avx512    -mavx512f -mavx512bw -mavx512dq -mavx512vl + AVX2/FMA (x86-64 only)
//
// dispatch.cpp defines the public functions of ntxent.h and augment.h: each calls the copy for
// the best set the running CPU supports (cpuid, checked once), which the environment variable
// FASTCLR_ISA=baseline|avx2|avx512 can lower, never raise (tests run the lower copies that way).
// With the CMake option FASTCLR_NATIVE_ARCH=ON only the baseline copy is built, with
// -march=native, and it reports itself as "native": a local build for this machine alone.
#pragma once

#ifndef FASTCLR_ISA_NS
#define FASTCLR_ISA_NS baseline
#endif

namespace fastclr {

// Name of the instruction set the kernels run with in this process ("baseline", "avx2",
// "avx512", or "native" for a FASTCLR_NATIVE_ARCH build); std::invalid_argument if FASTCLR_ISA
// holds anything but baseline, avx2 or avx512.
const char* active_isa();

// Names of the instruction-set copies compiled into this library, comma-separated.
const char* compiled_isas();

}  // namespace fastclr
