// The part of the ONNX Runtime C API that the onnxprune custom-op library calls, declared here
// from the published ABI rather than from ORT's headers (no wheel ships them, and the API is
// ABI-stable and append-only: an OrtApi table obtained for version N keeps every slot of every
// version <= N at a fixed index forever).
//
// The function table is laid out by slot index. Slots we never call are opaque `void*` padding,
// and every slot we do call is pinned below with a static_assert on its index, so a mistake in
// the padding arithmetic fails the build instead of calling the wrong function at run time.
// Slot indices and the versions that introduced them were taken from the public
// onnxruntime_c_api.h; tests/test_runtime_ops.py exercises each of them against the installed
// runtime.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ortabi {

// The oldest API version that has everything used below: KernelContext_ParallelFor (slot 274)
// arrived in 1.17, as did OrtCustomOp::GetStartVersion/GetEndVersion/InferOutputShapeFn;
// CreateKernelV2/KernelComputeV2 (error statuses from kernels) in 1.16;
// KernelInfoGetConstantInput_tensor in 1.15.
constexpr uint32_t kTargetApiVersion = 17;

struct Status;  // OrtStatus: nullptr means success
struct SessionOptions;
struct KernelInfo;
struct KernelContext;
struct Value;
struct TensorTypeAndShapeInfo;
struct CustomOpDomain;
struct CustomOp;
struct ShapeInferContext;
struct OpAttr;
struct Api;

enum ErrorCode : int {
  kOk = 0,
  kFail = 1,
  kInvalidArgument = 2,
  kRuntimeException = 6,
  kNotImplemented = 9,
  kInvalidGraph = 10,
};

// ONNXTensorElementDataType values are TensorProto.DataType values.
enum ElementType : int {
  kUndefined = 0,
  kFloat = 1,
  kUint8 = 2,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kFloat16 = 10,
};

enum InputOutputCharacteristic : int {
  kRequired = 0,
  kOptional = 1,
  kVariadic = 2,
};

enum MemType : int { kMemTypeDefault = 0 };

// OrtOpAttrType, as ReadOpAttr takes it.
enum OpAttrType : int {
  kOpAttrUndefined = 0,
  kOpAttrInt = 1,
  kOpAttrInts = 2,
  kOpAttrFloat = 3,
  kOpAttrFloats = 4,
  kOpAttrString = 5,
  kOpAttrStrings = 6,
};

using StatusPtr = Status*;

struct ApiBase {
  const Api* (*GetApi)(uint32_t version) noexcept;
  const char* (*GetVersionString)() noexcept;
};

struct Api {
  /* 0 */ Status* (*CreateStatus)(ErrorCode code, const char* msg) noexcept;
  /* 1 */ ErrorCode (*GetErrorCode)(const Status* status) noexcept;
  /* 2 */ const char* (*GetErrorMessage)(const Status* status) noexcept;
  void* unused_3_25[23];
  /* 26 */ StatusPtr (*CreateCustomOpDomain)(const char* domain, CustomOpDomain** out) noexcept;
  /* 27 */ StatusPtr (*CustomOpDomain_Add)(CustomOpDomain* domain, const CustomOp* op) noexcept;
  /* 28 */ StatusPtr (*AddCustomOpDomain)(SessionOptions* options, CustomOpDomain* domain) noexcept;
  void* unused_29_50[22];
  /* 51 */ StatusPtr (*GetTensorMutableData)(Value* value, void** out) noexcept;
  void* unused_52_56[5];
  /* 57 */ StatusPtr (*CreateTensorTypeAndShapeInfo)(TensorTypeAndShapeInfo** out) noexcept;
  /* 58 */ StatusPtr (*SetTensorElementType)(TensorTypeAndShapeInfo* info, ElementType type) noexcept;
  /* 59 */ StatusPtr (*SetDimensions)(TensorTypeAndShapeInfo* info, const int64_t* dims, size_t count) noexcept;
  /* 60 */ StatusPtr (*GetTensorElementType)(const TensorTypeAndShapeInfo* info, ElementType* out) noexcept;
  /* 61 */ StatusPtr (*GetDimensionsCount)(const TensorTypeAndShapeInfo* info, size_t* out) noexcept;
  /* 62 */ StatusPtr (*GetDimensions)(const TensorTypeAndShapeInfo* info, int64_t* dims, size_t count) noexcept;
  /* 63 */ StatusPtr (*GetSymbolicDimensions)(const TensorTypeAndShapeInfo* info, const char* dim_params[],
                                              size_t count) noexcept;
  void* unused_64[1];
  /* 65 */ StatusPtr (*GetTensorTypeAndShape)(const Value* value, TensorTypeAndShapeInfo** out) noexcept;
  void* unused_66_84[19];
  /* 85 */ StatusPtr (*KernelInfoGetAttribute_float)(const KernelInfo* info, const char* name, float* out) noexcept;
  /* 86 */ StatusPtr (*KernelInfoGetAttribute_int64)(const KernelInfo* info, const char* name, int64_t* out) noexcept;
  /* 87 */ StatusPtr (*KernelInfoGetAttribute_string)(const KernelInfo* info, const char* name, char* out,
                                                     size_t* size) noexcept;
  /* 88 */ StatusPtr (*KernelContext_GetInputCount)(const KernelContext* ctx, size_t* out) noexcept;
  /* 89 */ StatusPtr (*KernelContext_GetOutputCount)(const KernelContext* ctx, size_t* out) noexcept;
  /* 90 */ StatusPtr (*KernelContext_GetInput)(const KernelContext* ctx, size_t index, const Value** out) noexcept;
  /* 91 */ StatusPtr (*KernelContext_GetOutput)(KernelContext* ctx, size_t index, const int64_t* dims,
                                               size_t dim_count, Value** out) noexcept;
  void* unused_92[1];
  /* 93 */ void (*ReleaseStatus)(Status* status) noexcept;
  void* unused_94_98[5];
  /* 99 */ void (*ReleaseTensorTypeAndShapeInfo)(TensorTypeAndShapeInfo* info) noexcept;
  void* unused_100[1];
  /* 101 */ void (*ReleaseCustomOpDomain)(CustomOpDomain* domain) noexcept;
  void* unused_102_161[60];
  /* 162 */ StatusPtr (*KernelInfoGetAttributeArray_float)(const KernelInfo* info, const char* name, float* out,
                                                         size_t* size) noexcept;
  /* 163 */ StatusPtr (*KernelInfoGetAttributeArray_int64)(const KernelInfo* info, const char* name, int64_t* out,
                                                         size_t* size) noexcept;
  void* unused_164_248[85];
  /* 249 */ StatusPtr (*KernelInfoGetConstantInput_tensor)(const KernelInfo* info, size_t index, int* is_constant,
                                                         const Value** out) noexcept;
  void* unused_250_266[17];
  /* 267 */ StatusPtr (*ShapeInferContext_GetInputCount)(const ShapeInferContext* ctx, size_t* out) noexcept;
  /* 268 */ StatusPtr (*ShapeInferContext_GetInputTypeShape)(const ShapeInferContext* ctx, size_t index,
                                                           TensorTypeAndShapeInfo** info) noexcept;
  /* 269 */ StatusPtr (*ShapeInferContext_GetAttribute)(const ShapeInferContext* ctx, const char* name,
                                                      const OpAttr** attr) noexcept;
  /* 270 */ StatusPtr (*ShapeInferContext_SetOutputTypeShape)(const ShapeInferContext* ctx, size_t index,
                                                            const TensorTypeAndShapeInfo* info) noexcept;
  /* 271 */ StatusPtr (*SetSymbolicDimensions)(TensorTypeAndShapeInfo* info, const char* dim_params[],
                                              size_t count) noexcept;
  /* 272 */ StatusPtr (*ReadOpAttr)(const OpAttr* attr, OpAttrType type, void* data, size_t len, size_t* out) noexcept;
  void* unused_273[1];
  /* 274 */ StatusPtr (*KernelContext_ParallelFor)(const KernelContext* ctx, void (*fn)(void*, size_t), size_t total,
                                                 size_t num_batch, void* user_data) noexcept;
};

#define ORTABI_SLOT(name, index) \
  static_assert(offsetof(Api, name) / sizeof(void*) == (index), "OrtApi slot of " #name " must be " #index)
ORTABI_SLOT(CreateStatus, 0);
ORTABI_SLOT(GetErrorCode, 1);
ORTABI_SLOT(GetErrorMessage, 2);
ORTABI_SLOT(CreateCustomOpDomain, 26);
ORTABI_SLOT(CustomOpDomain_Add, 27);
ORTABI_SLOT(AddCustomOpDomain, 28);
ORTABI_SLOT(GetTensorMutableData, 51);
ORTABI_SLOT(CreateTensorTypeAndShapeInfo, 57);
ORTABI_SLOT(SetTensorElementType, 58);
ORTABI_SLOT(SetDimensions, 59);
ORTABI_SLOT(GetTensorElementType, 60);
ORTABI_SLOT(GetDimensionsCount, 61);
ORTABI_SLOT(GetDimensions, 62);
ORTABI_SLOT(GetSymbolicDimensions, 63);
ORTABI_SLOT(GetTensorTypeAndShape, 65);
ORTABI_SLOT(KernelInfoGetAttribute_float, 85);
ORTABI_SLOT(KernelInfoGetAttribute_int64, 86);
ORTABI_SLOT(KernelInfoGetAttribute_string, 87);
ORTABI_SLOT(KernelContext_GetInputCount, 88);
ORTABI_SLOT(KernelContext_GetOutputCount, 89);
ORTABI_SLOT(KernelContext_GetInput, 90);
ORTABI_SLOT(KernelContext_GetOutput, 91);
ORTABI_SLOT(ReleaseStatus, 93);
ORTABI_SLOT(ReleaseTensorTypeAndShapeInfo, 99);
ORTABI_SLOT(ReleaseCustomOpDomain, 101);  // ORT itself asserts this one: the end of version 1
ORTABI_SLOT(KernelInfoGetAttributeArray_float, 162);
ORTABI_SLOT(KernelInfoGetAttributeArray_int64, 163);
ORTABI_SLOT(KernelInfoGetConstantInput_tensor, 249);
ORTABI_SLOT(ShapeInferContext_GetInputCount, 267);
ORTABI_SLOT(ShapeInferContext_GetInputTypeShape, 268);
ORTABI_SLOT(ShapeInferContext_GetAttribute, 269);
ORTABI_SLOT(ShapeInferContext_SetOutputTypeShape, 270);
ORTABI_SLOT(SetSymbolicDimensions, 271);
ORTABI_SLOT(ReadOpAttr, 272);
ORTABI_SLOT(KernelContext_ParallelFor, 274);
#undef ORTABI_SLOT

// OrtCustomOp as of version 17 plus the later append-only fields, which stay null. ORT reads a
// field only when `version` says it exists, so a struct that claims 17 never has the 1.18+
// members read.
struct CustomOp {
  uint32_t version;
  void* (*CreateKernel)(const CustomOp* op, const Api* api, const KernelInfo* info) noexcept;
  const char* (*GetName)(const CustomOp* op) noexcept;
  const char* (*GetExecutionProviderType)(const CustomOp* op) noexcept;
  ElementType (*GetInputType)(const CustomOp* op, size_t index) noexcept;
  size_t (*GetInputTypeCount)(const CustomOp* op) noexcept;
  ElementType (*GetOutputType)(const CustomOp* op, size_t index) noexcept;
  size_t (*GetOutputTypeCount)(const CustomOp* op) noexcept;
  void (*KernelCompute)(void* kernel, KernelContext* ctx) noexcept;
  void (*KernelDestroy)(void* kernel) noexcept;
  InputOutputCharacteristic (*GetInputCharacteristic)(const CustomOp* op, size_t index) noexcept;
  InputOutputCharacteristic (*GetOutputCharacteristic)(const CustomOp* op, size_t index) noexcept;
  MemType (*GetInputMemoryType)(const CustomOp* op, size_t index) noexcept;                      // v13
  int (*GetVariadicInputMinArity)(const CustomOp* op) noexcept;                                  // v14
  int (*GetVariadicInputHomogeneity)(const CustomOp* op) noexcept;                               // v14
  int (*GetVariadicOutputMinArity)(const CustomOp* op) noexcept;                                 // v14
  int (*GetVariadicOutputHomogeneity)(const CustomOp* op) noexcept;                              // v14
  Status* (*CreateKernelV2)(const CustomOp* op, const Api* api, const KernelInfo* info, void** kernel) noexcept;  // v16
  Status* (*KernelComputeV2)(void* kernel, KernelContext* ctx) noexcept;                         // v16
  Status* (*InferOutputShapeFn)(const CustomOp* op, ShapeInferContext* ctx) noexcept;             // v17
  int (*GetStartVersion)(const CustomOp* op) noexcept;                                           // v17
  int (*GetEndVersion)(const CustomOp* op) noexcept;                                             // v17
  size_t (*GetMayInplace)(int** input_index, int** output_index) noexcept;                       // v18
  void (*ReleaseMayInplace)(int* input_index, int* output_index) noexcept;                       // v18
  size_t (*GetAliasMap)(int** input_index, int** output_index) noexcept;                         // v20
  void (*ReleaseAliasMap)(int* input_index, int* output_index) noexcept;                         // v20
};

static_assert(offsetof(CustomOp, CreateKernel) == sizeof(void*), "OrtCustomOp begins with a padded uint32 version");
static_assert(offsetof(CustomOp, KernelComputeV2) / sizeof(void*) == 18, "OrtCustomOp::KernelComputeV2 slot");
static_assert(offsetof(CustomOp, InferOutputShapeFn) / sizeof(void*) == 19, "OrtCustomOp::InferOutputShapeFn slot");
static_assert(offsetof(CustomOp, GetEndVersion) / sizeof(void*) == 21, "OrtCustomOp::GetEndVersion slot");

}  // namespace ortabi
