#include "model/sentencepiece_adapter.h"

#include <dlfcn.h>  // dlmopen (GNU)
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

namespace fwp {
namespace {

// The plugin's C functions (sentencepiece_plugin.cc).
struct PluginApi {
  void* (*load)(const char*, char*, size_t) = nullptr;
  void (*free)(void*) = nullptr;
  size_t (*encode)(const void*, const char*, size_t, int*, size_t) = nullptr;
  size_t (*decode)(const void*, const int*, size_t, char*, size_t) = nullptr;
  int (*info)(const void*, int) = nullptr;
  size_t (*piece)(const void*, int, char*, size_t) = nullptr;
  int (*train)(const char*, char*, size_t) = nullptr;
  std::string error;  // why the plugin could not be loaded
};

constexpr char kPluginName[] = "libfwp_sentencepiece.so";

// $FWP_SENTENCEPIECE_PLUGIN, else beside the executable, else ../lib, else
// the loader's search path.
std::vector<std::string> Candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("FWP_SENTENCEPIECE_PLUGIN"); env && *env) {
    paths.push_back(env);
  }
  std::error_code error;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) {
    paths.push_back((exe.parent_path() / kPluginName).string());
    paths.push_back((exe.parent_path() / ".." / "lib" / kPluginName).string());
  }
  paths.push_back(kPluginName);
  return paths;
}

const PluginApi& Plugin() {
  static PluginApi api;
  static std::once_flag once;
  std::call_once(once, [] {
    // A link-map namespace of its own (sentencepiece_plugin.cc says why).
    void* handle = nullptr;
    std::string tried;
    for (const auto& path : Candidates()) {
      if (path.find('/') != std::string::npos && !std::filesystem::exists(path)) continue;
      handle = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle != nullptr) break;
      tried += "\n  " + path + ": " + dlerror();
    }
    if (handle == nullptr) {
      api.error = std::string("cannot load the SentencePiece plugin ") + kPluginName +
                  " (set FWP_SENTENCEPIECE_PLUGIN to its path)" + tried;
      return;
    }
    const auto symbol = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(handle, name));
      if (fn == nullptr && api.error.empty()) {
        api.error = std::string("the SentencePiece plugin lacks ") + name;
      }
    };
    symbol(api.load, "fwp_spm_load");
    symbol(api.free, "fwp_spm_free");
    symbol(api.encode, "fwp_spm_encode");
    symbol(api.decode, "fwp_spm_decode");
    symbol(api.info, "fwp_spm_info");
    symbol(api.piece, "fwp_spm_piece");
    symbol(api.train, "fwp_spm_train");
  });
  return api;
}

}  // namespace

SentencePieceModel::SentencePieceModel() = default;

SentencePieceModel::~SentencePieceModel() {
  if (processor_ != nullptr) Plugin().free(processor_);
}

std::unique_ptr<SentencePieceModel> SentencePieceModel::Load(const std::string& path,
                                                             std::string* error) {
  const PluginApi& api = Plugin();
  if (!api.error.empty()) {
    *error = api.error;
    return nullptr;
  }
  std::unique_ptr<SentencePieceModel> model(new SentencePieceModel());
  char message[1024] = {};
  model->processor_ = api.load(path.c_str(), message, sizeof(message));
  if (model->processor_ == nullptr) {
    *error = message;
    return nullptr;
  }
  return model;
}

// The plugin fills caller-owned buffers and returns the full size; a second
// call with the exact size covers the rare overflow of the first guess.
std::vector<int> SentencePieceModel::Encode(std::string_view text) const {
  std::vector<int> ids(text.size() + 16);
  size_t n = Plugin().encode(processor_, text.data(), text.size(), ids.data(), ids.size());
  if (n > ids.size()) {
    ids.resize(n);
    n = Plugin().encode(processor_, text.data(), text.size(), ids.data(), ids.size());
  }
  ids.resize(n);
  return ids;
}

std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  std::string text(16 * ids.size() + 64, '\0');
  size_t n = Plugin().decode(processor_, ids.data(), ids.size(), text.data(), text.size());
  if (n > text.size()) {
    text.resize(n);
    n = Plugin().decode(processor_, ids.data(), ids.size(), text.data(), text.size());
  }
  text.resize(n);
  return text;
}

std::string SentencePieceModel::Piece(int id) const {
  std::string piece(64, '\0');
  size_t n = Plugin().piece(processor_, id, piece.data(), piece.size());
  if (n > piece.size()) {
    piece.resize(n);
    n = Plugin().piece(processor_, id, piece.data(), piece.size());
  }
  piece.resize(n);
  return piece;
}

int SentencePieceModel::PieceCount() const { return Plugin().info(processor_, 0); }
int SentencePieceModel::BosId() const { return Plugin().info(processor_, 1); }
int SentencePieceModel::EosId() const { return Plugin().info(processor_, 2); }

std::string TrainSentencePiece(const std::string& flags) {
  const PluginApi& api = Plugin();
  if (!api.error.empty()) return api.error;
  char message[4096] = {};
  return api.train(flags.c_str(), message, sizeof(message)) == 0 ? std::string() : std::string(message);
}

}  // namespace fwp
