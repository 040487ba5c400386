// write_layer(): the store-backed wrapper of write_layer_stream(), in its own
// translation unit so that the stream core links without the store.

#include "envsnap/image/layer.hpp"

namespace envsnap::image {

namespace {

class BlobSink : public Sink {
public:
  explicit BlobSink(store::BlobWriter& w) : m_writer(w) {}
  util::Result<void> write(const void* data, size_t size) override { return m_writer.write(data, size); }

private:
  store::BlobWriter& m_writer;
};

}  // namespace

util::Result<LayerResult> write_layer(const util::RootFs& root, const std::vector<FileEntry>& entries,
                                      const LayerOptions& options, store::Store& store, const Progress& progress) {
  auto writer = store.new_blob();
  if (!writer) return writer.error();
  BlobSink sink(*writer);
  auto stream = write_layer_stream(root, entries, options, sink, progress);
  if (!stream) return stream.error();
  auto blob = writer->commit(media_type(options.compression));
  if (!blob) return blob.error();
  LayerResult result;
  result.blob = std::move(*blob);
  result.diff_id = stream->diff_id;
  result.tar_size = stream->tar_size;
  return result;
}

}  // namespace envsnap::image
