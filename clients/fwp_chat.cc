// fwp-chat: an interactive terminal chat with fwp-server over the
// bidirectional Chat stream. The session lives on the server (its whole
// context is one constant-size state); each line you type is one turn.
//
//   fwp-chat --address localhost:50051 [--tls --ca_cert ca.pem] [--token T]
//
// Commands: /reset (a new session), /fork (continue in a copy), /save NAME,
// /load NAME, /stats, /max_tokens N, /temperature X, /help, /quit.
// Ctrl-C cancels the reply being streamed, not the program; Ctrl-D quits.
// Sessions saved with /save are kept on the server and named in
// --sessions_file; unsaved sessions are deleted on quit (/quit, Ctrl-D, and
// SIGTERM or SIGHUP: the terminal closed).
#include <editline/readline.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "cli/flags.h"
#include "clients/client_common.h"
#include "fwp/v1/fwp.grpc.pb.h"

ABSL_FLAG(std::string, session, "", "continue this session instead of starting a new one");
ABSL_FLAG(std::string, sessions_file, "", "where /save keeps names (default ~/.fwp-chat-sessions)");
ABSL_FLAG(int, max_tokens, 256, "tokens per reply at most");
ABSL_FLAG(double, temperature, 0.8, "sampling temperature (0: greedy)");
ABSL_FLAG(double, top_p, 0.95, "nucleus mass");
ABSL_FLAG(double, repetition_penalty, 1.1, "1: off");
ABSL_FLAG(std::string, stop, "", "a stop string for replies; C escapes are decoded "
          "(--stop '\\n': stop at a newline)");

namespace {

// Session calls (create, fork, get, delete) give up after this: a hung
// server or a dropped connection must not hang the terminal.
constexpr std::chrono::seconds kCallTimeout(30);

std::atomic<bool> interrupted{false};
void OnInterrupt(int) { interrupted = true; }
// SIGTERM, SIGHUP (the terminal closed): a thread waiting on this deletes
// the sessions not saved, as /quit does, and ends the program (the prompt's
// read does not return on a signal).
sem_t quit_signal;
void OnQuit(int) {
  interrupted = true;  // cancels a reply
  sem_post(&quit_signal);
}

std::string RandomSessionId() {
  std::random_device device;
  std::string id;
  for (int i = 0; i < 4; ++i) id += absl::StrFormat("%08x", device());
  return id;
}

class Chat {
 public:
  Chat(std::shared_ptr<grpc::Channel> channel, fwp::client::ChannelOptions options)
      : stub_(fwp::v1::Fwp::NewStub(channel)), options_(std::move(options)) {
    sessions_file_ = absl::GetFlag(FLAGS_sessions_file);
    if (sessions_file_.empty()) {
      const char* home = std::getenv("HOME");
      sessions_file_ = std::string(home ? home : ".") + "/.fwp-chat-sessions";
    }
    max_tokens_ = absl::GetFlag(FLAGS_max_tokens);
    temperature_ = absl::GetFlag(FLAGS_temperature);
    if (!absl::GetFlag(FLAGS_stop).empty()) {
      auto stop = fwp::client::StopString(absl::GetFlag(FLAGS_stop));
      if (!stop.ok()) {
        std::fprintf(stderr, "fwp-chat: %s\n", std::string(stop.status().message()).c_str());
        std::exit(2);
      }
      stop_ = *stop;
    }
  }

  ~Chat() { CloseStream(); }

  // A new session (the id chosen here, so a load balancer hashing
  // x-session-id creates it on the replica that will serve it).
  bool NewSession() {
    const std::string id = RandomSessionId();
    grpc::ClientContext context;
    fwp::client::PrepareContext(context, options_, id, kCallTimeout);
    fwp::v1::CreateSessionRequest request;
    request.set_session_id(id);
    fwp::v1::SessionInfo info;
    grpc::Status status = stub_->CreateSession(&context, request, &info);
    if (!status.ok()) return Error("cannot create a session", status);
    Insert(created_, id);
    SwitchTo(id);
    return true;
  }

  bool Use(const std::string& id) {
    fwp::v1::SessionInfo info;
    grpc::Status status = GetInfo(id, &info);
    if (!status.ok()) return Error("cannot use session " + id, status);
    SwitchTo(id);
    return true;
  }

  void Turn(const std::string& text) {
    if (!stream_) OpenStream();
    fwp::v1::ChatRequest request;
    request.mutable_prompt()->set_text(text);
    if (first_turn_) request.set_session_id(session_);
    auto* s = request.mutable_sampling();
    s->set_temperature(static_cast<float>(temperature_));
    s->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
    s->set_repetition_penalty(static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty)));
    request.mutable_stopping()->set_max_tokens(max_tokens_);
    if (!stop_.empty()) request.mutable_stopping()->add_stop(stop_);
    const auto start = std::chrono::steady_clock::now();
    interrupted = false;
    if (!stream_->Write(request)) {
      // The stream died while idle (server restart, proxy timeout): once more
      // on a new one.
      DropStream(/*report=*/false);
      OpenStream();
      request.set_session_id(session_);
      if (!stream_->Write(request)) {
        DropStream(/*report=*/true);
        return;
      }
    }
    first_turn_ = false;
    // Ctrl-C (a flag set by the handler) cancels this reply's stream.
    std::atomic<bool> reply_done{false};
    std::thread watcher([&] {
      while (!reply_done) {
        if (interrupted) {
          std::lock_guard<std::mutex> lock(context_mutex_);
          if (context_) context_->TryCancel();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
    fwp::v1::GenerateResponse m;
    bool finished = false;
    int tokens = 0;
    std::chrono::steady_clock::time_point first;
    while (stream_->Read(&m)) {
      if (tokens == 0 && m.token_ids_size() > 0) first = std::chrono::steady_clock::now();
      tokens += m.token_ids_size();
      std::cout << m.text() << std::flush;
      if (m.finished()) {
        finished = true;
        last_usage_ = m.usage();
        break;
      }
    }
    reply_done = true;
    watcher.join();
    std::cout << "\n";
    if (!finished && interrupted) std::cout << "[cancelled]\n";
    // A Ctrl-C, even one that came as the reply ended, may have cancelled the
    // stream: the next turn starts a new one.
    if (!finished || interrupted) DropStream(/*report=*/!interrupted);
    const auto end = std::chrono::steady_clock::now();
    if (tokens > 0) {
      last_ttft_s_ = std::chrono::duration<double>(first - start).count();
      const double decode_s = std::chrono::duration<double>(end - first).count();
      last_tokens_per_s_ = tokens > 1 && decode_s > 0 ? (tokens - 1) / decode_s : 0.0;
      last_tokens_ = tokens;
    }
  }

  // Returns false to quit.
  bool Command(const std::string& line) {
    std::istringstream in(line);
    std::string command, arg;
    in >> command >> arg;
    if (command == "/quit" || command == "/exit") return false;
    if (command == "/help") {
      std::cout << "/reset  /fork  /save NAME  /load NAME  /stats  /max_tokens N  "
                   "/temperature X  /quit\n";
    } else if (command == "/reset") {
      if (NewSession()) std::cout << "[new session " << session_ << "]\n";
    } else if (command == "/fork") {
      CloseStream();
      grpc::ClientContext context;
      fwp::client::PrepareContext(context, options_, session_, kCallTimeout);
      fwp::v1::ForkSessionRequest request;
      request.set_session_id(session_);
      fwp::v1::SessionInfo info;
      grpc::Status status = stub_->ForkSession(&context, request, &info);
      if (!status.ok()) {
        Error("cannot fork", status);
      } else {
        std::cout << "[forked " << session_ << " into " << info.session_id()
                  << "; continuing in the fork]\n";
        Insert(created_, info.session_id());
        SwitchTo(info.session_id());
      }
    } else if (command == "/save") {
      if (arg.empty()) {
        std::cout << "usage: /save NAME\n";
      } else {
        auto names = ReadNames();
        names[arg] = session_;
        if (!WriteNames(names)) {  // not named anywhere: /quit still deletes it
          std::cout << "[cannot write " << sessions_file_ << ": the session is not saved]\n";
        } else {
          Insert(saved_, session_);
          std::cout << "[saved session " << session_ << " as \"" << arg << "\"]\n";
        }
      }
    } else if (command == "/load") {
      auto names = ReadNames();
      if (arg.empty() || names.count(arg) == 0) {
        std::cout << "[no saved session \"" << arg << "\" in " << sessions_file_ << "]\n";
      } else if (Use(names[arg])) {
        Insert(saved_, names[arg]);
        std::cout << "[loaded \"" << arg << "\": session " << session_ << "]\n";
      }
    } else if (command == "/stats") {
      fwp::v1::SessionInfo info;
      grpc::Status status = GetInfo(session_, &info);
      int64_t state_bytes = info.state_bytes();
      std::cout << absl::StrFormat(
          "[session %s: %d tokens seen, state %.1f KiB (%s); last reply %d tokens, "
          "TTFT %.1f ms, %.1f tokens/s]\n",
          session_, status.ok() ? info.tokens() : -1, state_bytes / 1024.0,
          status.ok() ? fwp::v1::Tier_Name(info.tier()) : status.error_message(), last_tokens_,
          last_ttft_s_ * 1e3, last_tokens_per_s_);
    } else if (command == "/max_tokens") {
      int v;
      if (absl::SimpleAtoi(arg, &v) && v > 0) {
        max_tokens_ = v;
        std::cout << "[max_tokens " << v << "]\n";
      } else {
        std::cout << "usage: /max_tokens N (N > 0)\n";
      }
    } else if (command == "/temperature") {
      double v;
      if (absl::SimpleAtod(arg, &v) && v >= 0) {
        temperature_ = v;
        std::cout << "[temperature " << v << "]\n";
      } else {
        std::cout << "usage: /temperature X (X ≥ 0)\n";
      }
    } else {
      std::cout << "unknown command " << command << " (/help lists them)\n";
    }
    return true;
  }

  // Deletes the sessions made in this run that were not saved.
  void Cleanup() {
    CloseStream();
    DeleteUnsaved();
  }

  // Cleanup without closing the stream (from the quitting thread, while the
  // main one may be using it): the server cancels what runs on a deleted
  // session.
  void DeleteUnsaved() {
    std::set<std::string> created, saved;
    {
      std::lock_guard<std::mutex> lock(sets_mutex_);
      created = created_;
      saved = saved_;
    }
    for (const auto& id : created) {
      if (saved.count(id)) continue;
      grpc::ClientContext context;
      fwp::client::PrepareContext(context, options_, id, kCallTimeout);
      fwp::v1::DeleteSessionRequest request;
      request.set_session_id(id);
      fwp::v1::DeleteSessionResponse response;
      stub_->DeleteSession(&context, request, &response);
    }
  }

  const std::string& session() const { return session_; }

 private:
  void SwitchTo(const std::string& id) {
    CloseStream();
    session_ = id;
  }

  void OpenStream() {
    std::lock_guard<std::mutex> lock(context_mutex_);
    context_ = std::make_unique<grpc::ClientContext>();
    fwp::client::PrepareContext(*context_, options_, session_);
    stream_ = stub_->Chat(context_.get());
    first_turn_ = true;
  }

  void CloseStream() {
    if (!stream_) return;
    stream_->WritesDone();
    stream_->Finish();
    std::lock_guard<std::mutex> lock(context_mutex_);
    stream_.reset();
    context_.reset();
  }

  void DropStream(bool report) {
    stream_->WritesDone();
    grpc::Status status = stream_->Finish();
    if (report && !status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
      Error("the reply failed", status);
    }
    std::lock_guard<std::mutex> lock(context_mutex_);
    stream_.reset();
    context_.reset();
  }

  grpc::Status GetInfo(const std::string& id, fwp::v1::SessionInfo* info) {
    grpc::ClientContext context;
    fwp::client::PrepareContext(context, options_, id, kCallTimeout);
    fwp::v1::GetSessionRequest request;
    request.set_session_id(id);
    return stub_->GetSession(&context, request, info);
  }

  bool Error(const std::string& what, const grpc::Status& status) {
    std::cout << "[" << what << ": " << fwp::client::Describe(status) << "]\n";
    return false;
  }

  std::map<std::string, std::string> ReadNames() {
    std::map<std::string, std::string> names;
    std::ifstream in(sessions_file_);
    std::string name, id;
    while (in >> name >> id) names[name] = id;
    return names;
  }

  bool WriteNames(const std::map<std::string, std::string>& names) {
    std::ofstream out(sessions_file_, std::ios::trunc);
    for (const auto& [name, id] : names) out << name << " " << id << "\n";
    out.close();
    return static_cast<bool>(out);
  }

  std::unique_ptr<fwp::v1::Fwp::Stub> stub_;
  fwp::client::ChannelOptions options_;
  std::string sessions_file_;
  std::string session_;
  void Insert(std::set<std::string>& set, const std::string& id) {
    std::lock_guard<std::mutex> lock(sets_mutex_);
    set.insert(id);
  }
  std::mutex sets_mutex_;  // the quitting thread reads the sets
  std::set<std::string> created_, saved_;
  std::mutex context_mutex_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<fwp::v1::ChatRequest, fwp::v1::GenerateResponse>> stream_;
  bool first_turn_ = true;
  int max_tokens_ = 256;
  double temperature_ = 0.8;
  std::string stop_;  // --stop, unescaped
  fwp::v1::Usage last_usage_;
  int last_tokens_ = 0;
  double last_ttft_s_ = 0.0;
  double last_tokens_per_s_ = 0.0;
};

}  // namespace

int main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv, "chat with fwp-server in the terminal");
  fwp::client::ChannelOptions options = fwp::client::ChannelOptionsFromFlags();
  auto channel = fwp::client::MakeChannel(options);
  if (!channel.ok()) {
    std::fprintf(stderr, "fwp-chat: %s\n", std::string(channel.status().message()).c_str());
    return 2;
  }
  Chat chat(*channel, options);
  const bool ok = absl::GetFlag(FLAGS_session).empty() ? chat.NewSession()
                                                       : chat.Use(absl::GetFlag(FLAGS_session));
  if (!ok) return 1;
  std::cout << "fwp-chat: session " << chat.session() << " on " << options.address
            << " (/help for commands, Ctrl-C cancels a reply, Ctrl-D quits)\n";

  rl_catch_signals = 0;  // Ctrl-C is ours: ignored at the prompt, cancels a reply
  struct sigaction action = {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  termios terminal{};
  const bool have_terminal = tcgetattr(STDIN_FILENO, &terminal) == 0;
  sem_init(&quit_signal, 0, 0);
  // The quitting thread and the end of main race to clean up: whichever
  // comes first does it and ends the program (the other waits for that).
  std::atomic<bool> ending{false};
  // The thread takes no signals (a Ctrl-C is the reply's, a SIGTERM the
  // handler's on the main thread).
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &before);
  std::thread quitter([&] {
    while (sem_wait(&quit_signal) != 0) {  // EINTR
    }
    if (ending.exchange(true)) return;
    chat.DeleteUnsaved();
    if (have_terminal) tcsetattr(STDIN_FILENO, TCSANOW, &terminal);  // out of line editing
    std::cout << "\n" << std::flush;
    std::_Exit(0);
  });
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  quitter.detach();
  struct sigaction quit = {};
  quit.sa_handler = OnQuit;
  sigemptyset(&quit.sa_mask);
  sigaction(SIGTERM, &quit, nullptr);
  sigaction(SIGHUP, &quit, nullptr);
  while (true) {
    sigaction(SIGINT, &ignore, nullptr);  // at the prompt Ctrl-C does nothing
    interrupted = false;
    char* raw = readline("> ");
    if (raw == nullptr && interrupted) continue;
    if (raw == nullptr) break;  // Ctrl-D
    std::string line(raw);
    std::free(raw);
    if (line.empty()) continue;
    add_history(line.c_str());
    if (line[0] == '/') {
      if (!chat.Command(line)) break;
      continue;
    }
    sigaction(SIGINT, &action, nullptr);
    chat.Turn(line);
  }
  if (ending.exchange(true)) {
    while (true) pause();  // the quitting thread cleans up and exits
  }
  chat.Cleanup();
  std::cout << "\n" << std::flush;
  std::_Exit(0);  // the detached thread must not outlive `chat` in exit()
}
