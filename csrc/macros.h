// Portability macros shared by every op's numerical body (<op>_common.h).
// The same HOST_DEVICE_INLINE template is compiled by the host compiler for
// the CPU launcher and by nvcc for the CUDA launcher, so both backends run
// one numerical definition (the pattern of torchvision's
// box_iou_rotated_utils.h).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HOST_DEVICE __host__ __device__
#define HOST_DEVICE_INLINE __host__ __device__ __forceinline__
#else
#define HOST_DEVICE
#define HOST_DEVICE_INLINE inline
#endif

#if defined(__GNUC__) && !defined(__CUDACC__)
#define CNNVIS_RESTRICT __restrict__
#else
#define CNNVIS_RESTRICT
#endif

// Before a channel loop of a numerical body: its iterations are independent
// (the pointers do not alias), so the host compiler may vectorize it without
// run-time alias checks. Nothing under nvcc.
#if defined(__GNUC__) && !defined(__CUDACC__) && !defined(__clang__)
#define CNNVIS_IVDEP _Pragma("GCC ivdep")
#else
#define CNNVIS_IVDEP
#endif
