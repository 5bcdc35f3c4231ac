"""OS slots: their metadata, boot selection and assessment, manual control."""
