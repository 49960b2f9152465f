// Status plumbing shared by every module: errors are absl::Status values until
// the RPC edge (STYLE.md, habit 6).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function
// when it is not OK.
#define FWP_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status fwp_status_ = (expr);           \
    if (!fwp_status_.ok()) return fwp_status_;     \
  } while (0)

#define FWP_CONCAT_INNER_(a, b) a##b
#define FWP_CONCAT_(a, b) FWP_CONCAT_INNER_(a, b)

// `FWP_ASSIGN_OR_RETURN(auto x, MakeX());` binds the value of an
// absl::StatusOr or returns its error.
#define FWP_ASSIGN_OR_RETURN(lhs, expr) \
  FWP_ASSIGN_OR_RETURN_IMPL_(FWP_CONCAT_(fwp_statusor_, __LINE__), lhs, expr)
#define FWP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
